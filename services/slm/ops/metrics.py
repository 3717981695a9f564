"""Prometheus metrics of the Doorman (served as text at /metrics)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# "_created" series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client


class Metrics:
    """Every metric the service exports, in one registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slm_requests", "HTTP requests by endpoint and status code",
            ["endpoint", "status"], registry=r,
        )
        self.cancelled = Counter(
            "slm_requests_cancelled", "Requests whose client went away before the end",
            registry=r,
        )
        self.queue_depth = Gauge(
            "slm_queue_depth", "Requests admitted and waiting for the model", registry=r
        )
        self.processing = Gauge(
            "slm_requests_processing", "Requests the model is working on", registry=r
        )
        self.prompt_tokens = Counter(
            "slm_prompt_tokens", "Prompt tokens received (tokens in)", registry=r
        )
        self.completion_tokens = Counter(
            "slm_completion_tokens", "Tokens generated (tokens out)", registry=r
        )
        self.prompt_seconds = Counter(
            "slm_prompt_seconds", "Time spent processing prompts", registry=r
        )
        self.generation_seconds = Counter(
            "slm_generation_seconds", "Time spent generating tokens", registry=r
        )
        self.documents = Gauge(
            "slm_documents", "Documents held for chat context (in memory)", registry=r,
        )
        self.prompt_cache_restores = Gauge(
            "slm_prompt_cache_restores", "Prompts that started from a prompt-cache snapshot "
            "(since start)", registry=r,
        )
        self.prompt_cache_bytes = Gauge(
            "slm_prompt_cache_bytes", "Bytes of KV snapshots held in memory", registry=r,
        )
        self.prompt_tps = Gauge(
            "slm_prompt_tokens_per_second", "Prompt processing speed of the last request",
            registry=r,
        )
        self.generation_tps = Gauge(
            "slm_generation_tokens_per_second", "Generation speed of the last request",
            registry=r,
        )
        self.ttft = Histogram(
            "slm_time_to_first_token_seconds", "Time from admission to the first token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )
        self.ready = Gauge("slm_ready", "1 once the model is loaded and warm", registry=r)
        self.memory_rss = Gauge("slm_memory_rss_bytes", "Resident memory of the service now",
                                registry=r)
        self.memory_budget = Gauge("slm_memory_budget_bytes",
                                   "The memory budget (memory.budget_mb)", registry=r)
        self.ledger_wait = Histogram(
            "slm_ledger_append_seconds",
            "Time an answer waited for its ledger record to be durable",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )

        self.answered_by = Counter(
            "slm_answered_by_tier", "Answered requests by the tier that answered",
            ["tier"], registry=r,
        )
        self.entities = Counter(
            "slm_sanitised_entities", "Entities replaced by placeholders, by type",
            ["type"], registry=r,
        )
        self.breaker_state = Gauge(
            "slm_upstream_breaker_state",
            "Circuit breaker of each upstream: 0 closed, 1 open, 2 half-open",
            ["upstream"], registry=r,
        )
        self.upstream_healthy = Gauge(
            "slm_upstream_healthy", "1 while an upstream passes its health check (or has "
            "none)", ["upstream"], registry=r,
        )
        self.upstream_requests = Counter(
            "slm_upstream_requests", "Upstream call attempts by outcome",
            ["upstream", "outcome"], registry=r,
        )
        self.upstream_retries = Counter(
            "slm_upstream_retries", "Upstream call attempts that were retried",
            ["upstream"], registry=r,
        )

    def track_queue(self, waiting: Callable[[], int], processing: Callable[[], int]) -> None:
        """Read queue figures at scrape time instead of tracking every change."""
        self.queue_depth.set_function(waiting)
        self.processing.set_function(processing)

    def render(self) -> bytes:
        """The Prometheus text exposition of all metrics."""
        return generate_latest(self.registry)
