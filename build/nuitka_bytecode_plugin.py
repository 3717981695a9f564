"""Nuitka user plugin: the Doorman's own package compiled to C, its third-party
dependencies included as bytecode.

Used for every binary (build/nuitka-compile.sh, both architectures). The request path's
hot loop is llama.cpp's C code; the Python around it runs as fast in the embedded
interpreter as compiled (measured: Nuitka's throughput was equal to CPython's or lower), so C
buys the dependencies nothing while costing most of the build: on a 2-core machine the
amd64 compile took 751 s before sigstore's closure came in, 1713 s with the document
readers, and the same build with the dependencies as bytecode took 9 CPU-minutes against
48 and gave a 27.5 MB binary against 56.5 MB. Under arm64 emulation each module Nuitka
optimises for C costs about ten times more again.

Packages are listed by name, so a new dependency is compiled to C until it is added here;
the standard library keeps Nuitka's default.
"""

from nuitka.plugins.PluginBase import NuitkaPluginBase

BYTECODE = frozenset({
    # the HTTP stack and the service's runtime dependencies
    "starlette", "uvicorn", "h11", "anyio", "sniffio", "click", "msgspec", "prometheus_client",
    "jinja2", "markupsafe", "llama_cpp", "systemd", "typing_extensions", "phonenumbers",
    # tier B/C upstream calls
    "httpx", "httpcore", "idna", "certifi",
    # sigstore's closure (the start-up signature check; email_validator and dnspython ship
    # with it unused; rich is its console output)
    "sigstore", "sigstore_models", "rekor_types", "tuf", "securesystemslib", "cryptography",
    "cffi", "rfc3161_client", "rfc8785", "jwt", "id", "platformdirs", "annotated_types",
    "typing_inspection", "pydantic", "pydantic_core", "requests", "urllib3",
    "charset_normalizer", "email_validator", "dns", "rich", "markdown_it", "mdurl",
    # the document readers (run only in the `slm extract-text` child)
    "pypdf", "docx", "openpyxl", "et_xmlfile", "lxml", "python_multipart", "multipart",
})

TRIGGER_SUFFIXES = ("-preLoad", "-postLoad")


class NuitkaPluginSlmBytecode(NuitkaPluginBase):
    plugin_name = "slm-bytecode"
    plugin_desc = "Include the third-party dependencies as bytecode; compile slm to C."

    @staticmethod
    def isAlwaysEnabled():
        return True

    def decideCompilation(self, module_name):
        # the small modules Nuitka makes for a package's load triggers stay C: as bytecode
        # Nuitka 4.3 crashes on them ('UncompiledPythonModule' has no getCompilationMode)
        if module_name.asString().endswith(TRIGGER_SUFFIXES):
            return None
        if module_name.getTopLevelPackageName().asString() in BYTECODE:
            return "bytecode"
        return None
