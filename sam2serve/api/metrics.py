"""Prometheus metrics, one registry per app (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sam2serve.service import Sam2Service


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

    def watch(self, service: Sam2Service) -> None:
        """Export the service's running totals (cache, lanes) as counters read at scrape."""
        self.registry.register(ServiceCounters(service))


class ServiceCounters(Collector):
    """Counters owned by the service, read when /metrics is scraped."""

    def __init__(self, service: Sam2Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        cache = self._service.cache
        for name, doc, value in (
            ("sam2serve_cache_hits", "Embedding cache hits since start", cache.hits),
            ("sam2serve_cache_misses", "Embedding cache misses since start", cache.misses),
            ("sam2serve_cache_evictions", "Embeddings evicted for room", cache.evictions),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        refused = CounterMetricFamily(
            "sam2serve_lane_refused", "Jobs answered 503 because a lane was full", labels=["lane"]
        )
        dropped = CounterMetricFamily(
            "sam2serve_lane_dropped",
            "Queued jobs dropped because their client went away",
            labels=["lane"],
        )
        for lane in (self._service.embed_lane, self._service.click_lane):
            refused.add_metric([lane.name], lane.refused)
            dropped.add_metric([lane.name], lane.dropped)
        yield refused
        yield dropped
