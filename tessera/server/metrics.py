"""Prometheus metrics for `/metrics`, in a registry of their own (so tests and embedding apps can
create several servers in one process without name clashes). Every series has a model_name label.

Gauges are refreshed from the engine's stats when scraped; counters and latency histograms are fed
by the HTTP process as deltas arrive, so they measure what clients see (including IPC).
"""
from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# `*_created` timestamp series double the output for nothing a dashboard uses.
disable_created_metrics()

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r, label = self.registry, ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"tessera:{name}", doc, label, registry=r).labels(model_name)

        self.num_running_reqs = gauge("num_running_reqs", "requests in the running batch")
        self.num_queued_reqs = gauge("num_queued_reqs", "requests waiting to be scheduled")
        self.kv_usage_ratio = gauge("kv_usage_ratio", "fraction of the KV pool not free "
                                    "(held by running requests or the prefix cache)")
        self.kv_free_tokens = gauge("kv_free_tokens", "free KV slots (tokens)")
        self.kv_used_tokens = gauge("kv_used_tokens", "KV slots held by running requests")
        self.kv_cached_tokens = gauge("kv_cached_tokens", "KV slots held by the prefix cache")
        self.cache_hit_rate = gauge("cache_hit_rate", "prompt tokens served from the prefix "
                                    "cache / prompt tokens, since start")
        self.prompt_tokens = Counter("tessera:prompt_tokens", "prompt tokens of admitted samples",
                                     label, registry=r).labels(model_name)
        self.generation_tokens = Counter("tessera:generation_tokens", "tokens generated", label,
                                         registry=r).labels(model_name)
        self.num_requests = Counter("tessera:request_success", "samples finished, by reason",
                                    [*label, "finish_reason"], registry=r)
        self.client_disconnects = Counter(
            "tessera:client_disconnects", "requests whose client went away before every sample "
            "finished (those samples count as request_success{finish_reason=\"abort\"})", label,
            registry=r).labels(model_name)
        self.model_name = model_name
        self.ttft = Histogram("tessera:time_to_first_token_seconds", "time to first token",
                              label, buckets=_TTFT_BUCKETS, registry=r).labels(model_name)
        self.itl = Histogram("tessera:inter_token_latency_seconds", "time between tokens",
                             label, buckets=_ITL_BUCKETS, registry=r).labels(model_name)
        self.e2e = Histogram("tessera:e2e_request_latency_seconds", "request latency",
                             label, buckets=_E2E_BUCKETS, registry=r).labels(model_name)
        # SGLang's names (dashboards built for `sglang:` series work on `tessera:` ones)
        self.num_queue_reqs = gauge("num_queue_reqs", "requests waiting to be scheduled "
                                    "(SGLang's name for num_queued_reqs)")
        self.token_usage = gauge("token_usage", "fraction of the KV pool in use (SGLang's name "
                                 "for kv_usage_ratio)")
        self.gen_throughput = gauge("gen_throughput", "generated tokens per second since the "
                                    "previous scrape")
        self.queue_time = Histogram("tessera:queue_time_seconds", "arrival in the engine to "
                                    "first admission", label, buckets=_TTFT_BUCKETS,
                                    registry=r).labels(model_name)
        self.tpot = Histogram("tessera:time_per_output_token_seconds", "time per output token "
                              "after the first, per finished sample", label,
                              buckets=_ITL_BUCKETS, registry=r).labels(model_name)
        self._last_scrape: tuple[float, float] | None = None  # (time, generation tokens)

    def update_engine_stats(self, stats: dict[str, float]) -> None:
        pool = max(stats["kv_pool_size"], 1)
        self.num_running_reqs.set(stats["num_running_reqs"])
        self.num_queued_reqs.set(stats["num_queued_reqs"])
        self.kv_free_tokens.set(stats["kv_free_tokens"])
        self.kv_used_tokens.set(stats["kv_used_tokens"])
        self.kv_cached_tokens.set(stats["kv_cached_tokens"])
        self.kv_usage_ratio.set(1.0 - stats["kv_free_tokens"] / pool)
        self.num_queue_reqs.set(stats["num_queued_reqs"])
        self.token_usage.set(1.0 - stats["kv_free_tokens"] / pool)
        now, tokens = time.monotonic(), stats["generation_tokens_total"]
        if self._last_scrape is not None and now > self._last_scrape[0]:
            self.gen_throughput.set((tokens - self._last_scrape[1]) / (now - self._last_scrape[0]))
        self._last_scrape = (now, tokens)
        prompt = stats["prompt_tokens_total"]
        self.cache_hit_rate.set(stats["cached_tokens_total"] / prompt if prompt else 0.0)

    def finished(self, reason: str | None) -> None:
        self.num_requests.labels(self.model_name, reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
