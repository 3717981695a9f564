"""Nuitka user plugin: compile only the Doorman's own code (``slm``) to C and include
every other module as bytecode.

Used for binaries built inside an emulated chroot (build/binary-emulated.sh), where each
C file costs ~10x its native compile time: the third-party set (uvicorn, starlette, httpx,
jinja2, ...) is what makes a full Nuitka build long. Bytecode modules run in the embedded
interpreter at CPython's own speed. Release builds on a native machine compile everything.
"""

from nuitka.plugins.PluginBase import NuitkaPluginBase

COMPILED = ("slm", "slm_main", "__main__")


class NuitkaPluginSlmBytecode(NuitkaPluginBase):
    plugin_name = "slm-bytecode"
    plugin_desc = "Compile only the slm package to C; other modules as bytecode."

    @staticmethod
    def isAlwaysEnabled():
        return True

    def decideCompilation(self, module_name):
        top = module_name.getTopLevelPackageName()
        if top in COMPILED or top.startswith("__"):  # __parents_main__ and kin: Nuitka's own
            return "compiled"
        return "bytecode"
