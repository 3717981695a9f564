"""Tiers B and C: choosing where a request goes (router, hand-over rule), the
HTTP client, the circuit breaker."""
