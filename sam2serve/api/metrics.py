"""Prometheus metrics, one registry per app (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sam2serve_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sam2serve_request_seconds",
            "Server-side request latency by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "sam2serve_cache_bytes", "Bytes held by the embedding cache", registry=self.registry
        )
        self.cache_entries = Gauge(
            "sam2serve_cache_entries", "Images in the embedding cache", registry=self.registry
        )
        self.cache_hits = Gauge(
            "sam2serve_cache_hits", "Embedding cache hits since start", registry=self.registry
        )
        self.cache_misses = Gauge(
            "sam2serve_cache_misses", "Embedding cache misses since start", registry=self.registry
        )
