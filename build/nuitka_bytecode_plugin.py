"""Nuitka user plugin: include the larger pure-Python dependencies as bytecode instead of
compiling them to C.

Used for binaries built inside an emulated chroot (build/binary-emulated.sh), where each
C file costs ~10x its native compile time. Bytecode modules run in the embedded
interpreter at CPython's own speed. Only packages that Nuitka's package configuration has
no entries for (no anti-bloat or load triggers; those crash in bytecode mode) are listed;
phonenumbers alone brings ~300 region-metadata modules. Release builds on a native machine
compile everything.
"""

from nuitka.plugins.PluginBase import NuitkaPluginBase

BYTECODE = frozenset({"phonenumbers", "starlette", "httpcore", "h11", "prometheus_client",
                      "msgspec", "idna", "markupsafe", "sniffio",
                      # sigstore's closure (the signature check, and email_validator, which
                      # ships with it unused), except pydantic, requests, urllib3, certifi,
                      # cffi: those have Nuitka package configuration entries
                      "sigstore", "sigstore_models", "rekor_types", "tuf", "securesystemslib",
                      "cryptography", "rfc3161_client", "rfc8785", "jwt", "id",
                      "platformdirs", "annotated_types", "typing_inspection", "pydantic_core",
                      "email_validator"})


class NuitkaPluginSlmBytecode(NuitkaPluginBase):
    plugin_name = "slm-bytecode"
    plugin_desc = "Include the larger trigger-free pure-Python dependencies as bytecode."

    @staticmethod
    def isAlwaysEnabled():
        return True

    def decideCompilation(self, module_name):
        if module_name.getTopLevelPackageName().asString() in BYTECODE:
            return "bytecode"
        return None
