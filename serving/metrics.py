"""Prometheus metrics of the serving path, with vLLM's names where vLLM has one (prefix `mirrorspec:` instead of
`vllm:`), so existing dashboards map one to one.

Latencies: TTFT, TPOT (per request, after the first token), ITL (between two outputs of a request; an output
carries every token one engine step committed) and end-to-end. Speculation: drafts, draft tokens, accepted tokens
and accepted tokens per draft position. Load: running and waiting requests and replicas, read from the backend
when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily

from mirrorspec.orchestration.outputs import RequestOutput

PREFIX = "mirrorspec:"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)


class _Load:
    """Gauges read at scrape time: nothing to keep in step."""

    def __init__(self, read: Callable[[], dict[str, float]], model_name: str) -> None:
        self.read = read
        self.model_name = model_name

    def collect(self):
        values = self.read()
        for name, help_text in (("num_requests_running", "Requests in the running batch."),
                                ("num_requests_waiting", "Requests queued for a slot."),
                                ("num_replicas", "Engine replicas serving.")):
            gauge = GaugeMetricFamily(PREFIX + name, help_text, labels=["model_name"])
            gauge.add_metric([self.model_name], values.get(name, 0))
            yield gauge


class ServingMetrics:
    """Every series carries the served model's name (`model_name`, as vLLM's); counters have no `_created` twin
    (prometheus_client's default, which vLLM turns off too)."""

    def __init__(self, load: Callable[[], dict[str, float]], model_name: str) -> None:
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.model_name = model_name
        r, m = self.registry, ["model_name"]

        def histogram(name: str, help_text: str) -> Histogram:
            return Histogram(PREFIX + name, help_text, m, buckets=LATENCY_BUCKETS, registry=r).labels(model_name)

        def counter(name: str, help_text: str) -> Counter:
            return Counter(PREFIX + name, help_text, m, registry=r).labels(model_name)

        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.")
        self.tpot = histogram("time_per_output_token_seconds", "Mean time per output token after the first, per "
                                                               "request.")
        self.itl = histogram("inter_token_latency_seconds", "Time between two outputs of a request, per token they "
                                                            "carry.")
        self.e2e = histogram("e2e_request_latency_seconds", "Request latency, arrival to finish.")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.drafts = counter("spec_decode_num_drafts", "Steps that verified a draft.")
        self.draft_tokens = counter("spec_decode_num_draft_tokens", "Draft tokens verified.")
        self.accepted = counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.")
        self.finished = Counter(PREFIX + "request_success", "Finished requests by reason.",
                                m + ["finished_reason"], registry=r)
        self.accepted_per_pos = Counter(PREFIX + "spec_decode_num_accepted_tokens_per_pos",
                                        "Accepted draft tokens by draft position.", m + ["position"], registry=r)
        r.register(_Load(load, model_name))

    def output(self, out: RequestOutput, since_last_s: float | None) -> None:
        """One output of a request reached its client; `since_last_s`: time since its previous output."""
        if since_last_s is not None and out.new_token_ids:
            self.itl.observe(since_last_s / len(out.new_token_ids))
        if out.finished:
            self.finish(out)

    def finish(self, out: RequestOutput) -> None:
        st = out.stats
        self.finished.labels(self.model_name, out.finish_reason or "unknown").inc()
        self.prompt_tokens.inc(len(out.prompt_token_ids))
        self.generation_tokens.inc(len(out.token_ids))
        if st.ttft is not None:
            self.ttft.observe(st.ttft)
        if st.tpot is not None:
            self.tpot.observe(st.tpot)
        if st.finish_time is not None:
            self.e2e.observe(st.finish_time - st.arrival_time)
        self.drafts.inc(st.drafts)
        self.draft_tokens.inc(st.drafted)
        self.accepted.inc(st.accepted)
        for position, count in enumerate(st.accepted_per_position):
            self.accepted_per_pos.labels(self.model_name, str(position)).inc(count)

    def serve(self, host: str, port: int):
        """The /metrics endpoint over HTTP; returns (server, its port)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port


def observed(outputs: Iterable[RequestOutput], metrics: ServingMetrics | None) -> Iterator[RequestOutput]:
    """A request's outputs, each counted in the metrics (when there are any) as it passes."""
    last = None
    for out in outputs:
        now = time.perf_counter()
        if metrics is not None:
            metrics.output(out, None if last is None else now - last)
        last = now
        yield out
