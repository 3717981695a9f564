"""Configuration: the settings table (TOML, environment, flags) and the
[[upstream]] and [[adapter]] tables."""
