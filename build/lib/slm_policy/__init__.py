"""Release gates of service-slm: the license policy (and, later, the memory budget)."""
