"""Document ingest: extraction in a limited child, sanitised chunks, chat context."""
