"""Nuitka user plugin: include the larger pure-Python dependencies as bytecode instead of
compiling them to C.

Used for every binary (build/nuitka-compile.sh, both architectures): these packages are off
the request path's hot loop or run once at start (the signature check, the document
readers' child), so C buys them nothing measurable while costing most of the compile time
(the amd64 build took 751 s before sigstore's closure came in, 1569 s after, 1713 s with the
document readers; under arm64 emulation each C file costs ~10x more). Bytecode modules run
in the embedded interpreter at CPython's own speed. Only packages whose Nuitka package
configuration has no load triggers are listed (returning "bytecode" for numpy, uvicorn or
anyio crashes Nuitka 4.3); phonenumbers alone brings ~300 region-metadata modules.
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
                      "email_validator",
                      # entries with implicit imports or data files only, no triggers
                      "pydantic", "requests", "urllib3", "certifi",
                      # the document readers (run only in the `slm extract-text` child)
                      "pypdf", "docx", "openpyxl", "et_xmlfile", "python_multipart",
                      "multipart"})


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
