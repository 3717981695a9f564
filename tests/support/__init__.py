"""Test support: generated fixtures (tiny GGUF models, documents, the PII corpus), a fake
upstream, real `slm serve` processes on loopback, and the pytest plugin that serves them
as fixtures (registered by tests/conftest.py)."""
