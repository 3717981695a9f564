"""Allow ``python -m slm``."""

from slm.cli.main import main

raise SystemExit(main())
