"""How to run this same ``slm`` as a child process: the compiled binary, or this Python."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def slm_command() -> list[str]:
    """argv prefix that runs ``slm`` (the private Doorman, the isolated document parser)."""
    if "__compiled__" in globals():
        argv0 = sys.argv[0]
        if os.sep not in argv0:
            argv0 = shutil.which(argv0) or argv0
        return [str(Path(argv0).resolve())]
    return [sys.executable, "-m", "slm"]
