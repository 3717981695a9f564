"""The model: the GGUF file and its header, the memory planner, signature checks.

The one surface of ``slm`` that ``policy/`` and ``image/`` import (with ``slm.errors``).
"""
