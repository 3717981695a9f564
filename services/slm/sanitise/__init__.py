"""PII and secret redaction (sanitise) and restoring originals (rehydrate)."""
