"""Prometheus metrics, one registry per app (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sam2serve.image.service import ImageService


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

    def watch(self, service: ImageService) -> None:
        """Export the service's running totals (cache, lanes, shared tier) as counters read
        at scrape."""
        self.registry.register(ServiceCounters(service))
        if service.store.shared is not None:
            self.registry.register(SharedTierCounters(service))


class ServiceCounters(Collector):
    """Counters owned by the service, read when /metrics is scraped."""

    def __init__(self, service: ImageService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        cache = self._service.store.local
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
        service = self._service
        for lane in (service.embed_lane, service.click_lane, service.decode_lane):
            refused.add_metric([lane.name], lane.refused)
            dropped.add_metric([lane.name], lane.dropped)
        yield refused
        yield dropped


class SharedTierCounters(Collector):
    """The shared tier (Redis): operations by result, and whether Redis is up."""

    def __init__(self, service: ImageService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        tier = self._service.store.shared
        if tier is None:
            return
        ops = CounterMetricFamily(
            "sam2serve_shared_tier_ops",
            "Shared tier (Redis) operations by result: hit, miss, stored, refused "
            "(bad value), error (Redis fault), skipped (breaker open)",
            labels=["op", "result"],
        )
        for (op, result), n in sorted(tier.counts.items()):
            ops.add_metric([op, result], n)
        yield ops
        up = GaugeMetricFamily("sam2serve_shared_tier_up", "1 while Redis answers, 0 while down")
        up.add_metric([], 1.0 if tier.up else 0.0)
        yield up
