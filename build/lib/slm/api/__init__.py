"""The Doorman's HTTP surface (OpenAI-compatible)."""
