"""The audit ledger: the append-only hash-chained SQLite file, its read-only
verify/export tools, Litestream replication."""
