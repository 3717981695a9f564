"""The command line: ``slm`` and its subcommands, the ``slm chat`` client."""
