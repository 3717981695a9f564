"""Entry point Nuitka compiles into the `slm` binary (the same as the `slm` console script)."""

import sys

from slm.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
