"""Loopback load bench for `mirrorspec serve`: concurrent streaming gRPC clients against a real server.

Two runs, each against a fresh `mirrorspec serve` subprocess on the embedded local Ray cluster:

* `burst`: N clients (64) open their streams at once. Requests past the server's queue bound (replicas x
  serve.max_ongoing_requests + serve.max_queued_requests) must be refused with RESOURCE_EXHAUSTED; every other one must finish. Reports
  p50/p99 TTFT (first committed tokens), TPOT (time per output token after the first), ITL (between messages) and
  output tokens/s over the run.
* `scale`: C closed-loop clients (each sends its next request when the last one ends) for a fixed time while the
  bench asks the server for 2 replicas, then 1 again (AdminService.Scale, as `mirrorspec scale N` does). No request
  may fail; greedy answers must equal the same prompt's answer at any replica count.

    python -m mirrorspec.bench.serve_load --config bench/configs/serve_load.yaml --name issue7-serve-load

Writes bench/results/NAME.json and NAME.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mirrorspec.bench.harness import load_prompts
from mirrorspec.protos import admin_pb2, admin_pb2_grpc
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos import generation_pb2_grpc as pb_grpc


@dataclass
class Call:
    prompt: int
    started: float
    first: float | None = None  # first message with tokens
    stamps: list[float] = field(default_factory=list)  # every message with tokens
    token_ids: list[int] = field(default_factory=list)
    ended: float | None = None
    code: str = "OK"

    @property
    def tpot(self) -> float | None:
        n = len(self.token_ids)
        return (self.ended - self.first) / (n - 1) if self.first and n > 1 else None


class Server:
    """`mirrorspec serve` in a subprocess, on any free port; the first stdout line names the address."""

    def __init__(self, config: str, extra: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mirrorspec.cli.main", "serve", "--config", config,
                                      "--port", "0", *extra], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r" on (\S+?)(;|$)", line.strip())
        if not match:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.address = match.group(1)
        metrics = re.search(r"metrics on (\S+)", line)
        self.metrics_url = metrics.group(1) if metrics else None
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.GenerationServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def stop(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM (the server drains, then exits): its exit code, or None when it had to be killed after
        `timeout_s`."""
        self.channel.close()
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def stream(server: Server, prompt_index: int, text: str, max_new: int) -> Call:
    call = Call(prompt_index, time.perf_counter())
    request = pb.SingleGenerationRequest(request=pb.GenerationRequest(text=text), params=pb.Parameters(
        chat=True, stopping=pb.StoppingCriteria(max_new_tokens=max_new)))
    try:
        for msg in server.stub.GenerateStream(request, timeout=600):
            if msg.token_ids:
                now = time.perf_counter()
                call.first = call.first or now
                call.stamps.append(now)
                call.token_ids += msg.token_ids
    except grpc.RpcError as exc:
        call.code = exc.code().name
    else:
        if not call.token_ids:  # OK with no token is no answer: counted apart, never as served
            call.code = "OK_WITHOUT_TOKENS"
    call.ended = time.perf_counter()
    return call


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(calls: list[Call], wall_s: float) -> dict:
    ok = [c for c in calls if c.code == "OK"]
    ttft = [c.first - c.started for c in ok if c.first]
    tpot = [c.tpot for c in ok if c.tpot is not None]
    itl = [b - a for c in ok for a, b in zip(c.stamps, c.stamps[1:])]
    codes: dict[str, int] = {}
    for c in calls:
        codes[c.code] = codes.get(c.code, 0) + 1
    tokens = sum(len(c.token_ids) for c in ok)
    ms = lambda v: None if v is None else round(1000 * v, 1)  # noqa: E731
    return {"requests": len(calls), "codes": codes, "output_tokens": tokens, "wall_s": round(wall_s, 2),
            "output_tokens_per_s": round(tokens / wall_s, 2), "requests_per_s": round(len(ok) / wall_s, 3),
            "ttft_ms": {"p50": ms(pct(ttft, 50)), "p99": ms(pct(ttft, 99))},
            "tpot_ms": {"p50": ms(pct(tpot, 50)), "p99": ms(pct(tpot, 99))},
            "itl_ms": {"p50": ms(pct(itl, 50)), "p99": ms(pct(itl, 99))}}


def answers_agree(calls: list[Call]) -> dict:
    """Greedy answers per prompt: every completion of a prompt should be the same tokens."""
    by_prompt: dict[int, set[tuple[int, ...]]] = {}
    for c in calls:
        if c.code == "OK":
            by_prompt.setdefault(c.prompt, set()).add(tuple(c.token_ids))
    return {"prompts": len(by_prompt), "prompts_with_one_answer": sum(len(v) == 1 for v in by_prompt.values())}


def run_burst(server: Server, texts: list[str], clients: int, max_new: int) -> tuple[list[Call], float]:
    calls: list[Call | None] = [None] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait()  # all streams open together
        calls[i] = stream(server, i % len(texts), texts[i % len(texts)], max_new)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return calls, time.perf_counter() - start


def run_scale(server: Server, texts: list[str], clients: int, max_new: int, schedule: list[tuple[float, int]],
              duration_s: float) -> tuple[list[Call], float, float, list[dict]]:
    calls: list[Call] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop_at = start + duration_s

    def client(i: int) -> None:
        k = i
        while time.perf_counter() < stop_at:
            call = stream(server, k % len(texts), texts[k % len(texts)], max_new)
            with lock:
                calls.append(call)
            k += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    events = []
    for at_s, replicas in schedule:
        time.sleep(max(0.0, start + at_s - time.perf_counter()))
        asked = time.perf_counter() - start
        reply = server.admin.Scale(admin_pb2.ScaleRequest(replicas=replicas), timeout=600)
        events.append({"asked_s": round(asked, 2), "done_s": round(time.perf_counter() - start, 2),
                       "replicas": reply.replicas, "in_flight": reply.in_flight})
    for t in threads:
        t.join()
    return calls, start, time.perf_counter() - start, events


def phases(calls: list[Call], start: float, events: list[dict], wall_s: float) -> list[dict]:
    """Output tokens/s between the scale events, by when requests finished: each replica count's own throughput."""
    edges = [0.0, *(e["done_s"] for e in events), wall_s]
    counts = [1, *(e["replicas"] for e in events)]
    out = []
    for lo, hi, replicas in zip(edges, edges[1:], counts):
        tokens = sum(len(c.token_ids) for c in calls if c.code == "OK" and lo <= c.ended - start < hi)
        out.append({"from_s": round(lo, 1), "to_s": round(hi, 1), "replicas": replicas,
                    "output_tokens_per_s": round(tokens / (hi - lo), 2)})
    return out


def plot(results: dict, burst: list[Call], scaled: list[Call], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    ok = [c for c in burst if c.code == "OK"]
    t0 = min(c.started for c in burst)
    for row, c in enumerate(sorted(ok, key=lambda c: c.first)):
        a.plot([c.started - t0, c.first - t0], [row, row], color="tab:orange", lw=1)
        a.plot([c.first - t0, c.ended - t0], [row, row], color="tab:blue", lw=1)
    r = results["burst"]
    a.set_title(f"burst: {r['requests']} streams, {r['codes']}\n"
                f"TTFT p50/p99 {r['ttft_ms']['p50']}/{r['ttft_ms']['p99']} ms, "
                f"TPOT p50/p99 {r['tpot_ms']['p50']}/{r['tpot_ms']['p99']} ms", fontsize=9)
    a.set_xlabel("seconds (orange: waiting for the first tokens, blue: streaming)")
    a.set_ylabel("accepted request")
    t0 = min(c.started for c in scaled)
    ends = sorted(c.ended - t0 for c in scaled if c.code == "OK")
    b.plot(ends, range(1, len(ends) + 1), label="requests finished")
    for e in results["scale"]["events"]:
        b.axvspan(e["asked_s"], e["done_s"], color="tab:green", alpha=0.2)
        b.annotate(f"-> {e['replicas']} replicas", (e["done_s"], 1), fontsize=8, rotation=90, va="bottom")
    s = results["scale"]
    b.set_title(f"scale 1->2->1 under load: {s['requests']} requests, {s['codes']}", fontsize=9)
    b.set_xlabel("seconds (green: a Scale call in progress)")
    b.set_ylabel("requests finished")
    fig.suptitle(results["setup"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="bench/configs/serve_load.yaml")
    p.add_argument("--clients", type=int, default=64, help="burst: streams opened at once")
    p.add_argument("--scale-clients", type=int, default=12, help="scale: closed-loop clients")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--distinct-prompts", type=int, default=16,
                   help="clients cycle over this many prompts, so that each greedy answer is seen several times")
    p.add_argument("--duration-s", type=float, default=150.0, help="scale: how long the clients run")
    p.add_argument("--up-at-s", type=float, default=25.0, help="scale: when to ask for 2 replicas")
    p.add_argument("--down-at-s", type=float, default=85.0, help="scale: when to ask for 1 again")
    p.add_argument("--name", default="issue7-serve-load")
    p.add_argument("--out", default="bench/results")
    args, extra = p.parse_known_args()  # anything else goes to `mirrorspec serve` (e.g. --method tree)
    texts = [row["prompt"] for row in load_prompts(None)][: args.distinct_prompts]
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    server = Server(args.config, extra)
    try:
        info = server.stub.ModelInfo(pb.ModelInfoRequest(), timeout=30)
        burst, burst_s = run_burst(server, texts, args.clients, args.max_new_tokens)
    finally:
        burst_exit = server.stop()
    server = Server(args.config, extra)
    try:
        scaled, scale_start, scale_s, events = run_scale(server, texts, args.scale_clients, args.max_new_tokens,
                                            [(args.up_at_s, 2), (args.down_at_s, 1)], args.duration_s)
    finally:
        scale_exit = server.stop()
    results = {
        "setup": f"{os.cpu_count()} CPU cores; `mirrorspec serve --config {args.config} {' '.join(extra)}`; "
                 f"{info.model_id}, drafter {Path(info.drafter).name if info.drafter else 'none'}; "
                 f"{args.max_new_tokens} new tokens, greedy, chat",
        "command": "python -m mirrorspec.bench.serve_load " + " ".join(sys.argv[1:]),
        "burst": {**summarize(burst, burst_s), **answers_agree(burst), "server_exit": burst_exit},
        "scale": {**summarize(scaled, scale_s), **answers_agree(scaled), "events": events,
                  "phases": phases(scaled, scale_start, events, scale_s),
                  "clients": args.scale_clients, "server_exit": scale_exit},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, burst, scaled, out / f"{args.name}.png")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
