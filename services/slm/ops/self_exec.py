"""How to run this same ``slm`` as a child process: the compiled binary, or this Python."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def invoked_path() -> Path:
    """The command as invoked, resolved: argv[0], looked up on PATH when it is a bare
    name (``slm`` typed in a shell)."""
    argv0 = sys.argv[0]
    if argv0 and os.sep not in argv0:
        argv0 = shutil.which(argv0) or argv0
    return Path(argv0).resolve()


def slm_command() -> list[str]:
    """argv prefix that runs ``slm`` (the private Doorman, the isolated document parser)."""
    if "__compiled__" in globals():
        return [str(invoked_path())]
    return [sys.executable, "-m", "slm"]
