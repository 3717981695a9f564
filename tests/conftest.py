"""The suite's fixtures live in the plugin tests/support/plugin.py (``tests`` is on the
import path through pyproject's ``[tool.pytest.ini_options] pythonpath``)."""

pytest_plugins = ("support.plugin",)
