"""Allow ``python -m slm``."""

from slm.cli import main

raise SystemExit(main())
