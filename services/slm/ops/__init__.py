"""Operations: logs, Prometheus metrics, systemd readiness and watchdog, running
this same slm as a child."""
