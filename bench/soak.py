"""Soak: ten minutes of mixed traffic against a real `mirrorspec serve` while its drafter and then its replica die.

Closed-loop clients (each sends its next request when the last one ends) mix, by weight:
* good greedy streams and unary calls on a fixed set of prompts: each answer must equal that prompt's reference
  answer, taken before the soak, token for token (speculation is lossless, the exact engine batch-invariant, and
  a dead drafter only means plain decoding). A stream whose tokens differ counts as tokens lost or duplicated;
* bad requests (empty prompt, negative temperature, top_p > 1, max_new_tokens past the limit, an unknown method,
  bytes that are no message): each must be refused with INVALID_ARGUMENT;
* cancelled streams (cancelled after their first tokens) and deadline-bound ones (0.5 s for 200 tokens).

At a third of the run the bench kills the drafter actor's process (SIGKILL): the target must go on without drafts.
At two thirds it kills the serving target actor's process: its requests in flight may fail UNAVAILABLE (retryable),
Serve starts a new replica and every later request is served. Reported: requests by kind and status, answers
checked and wrong, tokens lost or duplicated (must be 0), recovery time after each kill, the server's memory (RSS of
its process tree, sampled every 5 s) and its growth over the run, and whether the server's in-flight gauges return
to 0 afterwards.

    python -m mirrorspec.bench.soak --config bench/configs/soak.yaml --duration-s 600 --name issue18-soak

Writes bench/results/NAME.json and NAME.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from mirrorspec.bench.harness import load_prompts
from mirrorspec.bench.serve_load import Server
from mirrorspec.protos import generation_pb2 as pb

MAX_NEW = 24
BACKOFF_S = 0.5
KINDS = {"good_stream": 9, "good_unary": 3, "bad": 3, "cancelled": 2, "deadline": 2}
BAD = {
    "empty prompt": lambda: pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="")]),
    "negative temperature": lambda: request("Hi", method=pb.SAMPLE, sampling=pb.SamplingParameters(temperature=-1.0)),
    "top_p above 1": lambda: request("Hi", method=pb.SAMPLE, sampling=pb.SamplingParameters(temperature=0.7,
                                                                                           top_p=1.5)),
    "max_new_tokens past the limit": lambda: request("Hi", stopping=pb.StoppingCriteria(max_new_tokens=10**6)),
    "unknown method": lambda: request("Hi", speculation=pb.SpeculationParameters(method=999)),
}


def request(text: str, **params) -> pb.BatchedGenerationRequest:
    params.setdefault("stopping", pb.StoppingCriteria(max_new_tokens=MAX_NEW))
    return pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text=text)],
                                       params=pb.Parameters(chat=True, **params))


def single(text: str, max_new: int) -> pb.SingleGenerationRequest:
    return pb.SingleGenerationRequest(request=pb.GenerationRequest(text=text), params=pb.Parameters(
        chat=True, stopping=pb.StoppingCriteria(max_new_tokens=max_new)))


@dataclass
class Outcome:
    """How one request ended; `client` stamps its kind and times."""

    code: str
    detail: str = ""
    checked: bool = False  # a good request whose answer was compared with the reference
    wrong: bool = False
    tokens_lost: int = 0
    tokens_extra: int = 0
    kind: str = ""
    started: float = 0.0
    ended: float = 0.0


class Soak:
    def __init__(self, server: Server, texts: list[str], reference: dict[int, list[int]], seed: int) -> None:
        self.server, self.texts, self.reference = server, texts, reference
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.seed = seed
        self.raw = server.channel.unary_unary("/fmaas.GenerationService/Generate",
                                              request_serializer=lambda b: b, response_deserializer=lambda b: b)

    def client(self, index: int, stop_at: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        kinds, weights = zip(*KINDS.items())
        while time.monotonic() < stop_at:
            kind = rng.choices(kinds, weights)[0]
            started = time.monotonic()
            outcome = getattr(self, kind)(rng)
            outcome.kind, outcome.started, outcome.ended = kind, started, time.monotonic()
            with self.lock:
                self.outcomes.append(outcome)
            if outcome.code == "UNAVAILABLE":
                time.sleep(BACKOFF_S)  # as a client's retry policy would: no replica is up at this moment

    def compare(self, prompt: int, tokens: list[int]) -> Outcome:
        expected = self.reference[prompt]
        common = next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
        return Outcome("OK", checked=True, wrong=tokens != expected,
                       tokens_lost=len(expected) - common, tokens_extra=len(tokens) - common)

    def good_stream(self, rng: random.Random) -> Outcome:
        prompt = rng.randrange(len(self.texts))
        tokens: list[int] = []
        try:
            for msg in self.server.stub.GenerateStream(single(self.texts[prompt], MAX_NEW), timeout=300):
                tokens += msg.token_ids
        except grpc.RpcError as exc:
            return Outcome(exc.code().name, exc.details() or "")
        return self.compare(prompt, tokens)

    def good_unary(self, rng: random.Random) -> Outcome:
        prompt = rng.randrange(len(self.texts))
        try:
            reply = self.server.stub.Generate(request(self.texts[prompt]), timeout=300)
        except grpc.RpcError as exc:
            return Outcome(exc.code().name, exc.details() or "")
        return self.compare(prompt, list(reply.responses[0].token_ids))

    def bad(self, rng: random.Random) -> Outcome:
        name = rng.choice([*BAD, "bytes that are no message"])
        try:
            if name in BAD:
                self.server.stub.Generate(BAD[name](), timeout=60)
            else:
                self.raw(bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))), timeout=60)
        except grpc.RpcError as exc:
            return Outcome(exc.code().name, name)
        return Outcome("OK", name)

    def cancelled(self, rng: random.Random) -> Outcome:
        call = self.server.stub.GenerateStream(single(self.texts[rng.randrange(len(self.texts))], 200), timeout=300)
        try:
            for msg in call:
                if msg.token_ids:
                    call.cancel()
        except grpc.RpcError as exc:
            return Outcome(exc.code().name)
        return Outcome("OK")

    def deadline(self, rng: random.Random) -> Outcome:
        try:
            list(self.server.stub.GenerateStream(single(self.texts[rng.randrange(len(self.texts))], 200), timeout=0.5))
        except grpc.RpcError as exc:
            return Outcome(exc.code().name)
        return Outcome("OK")


def tree_rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def actor_pid(server_pid: int, actor_class: str) -> int:
    """The pid of the server's Ray actor process of `actor_class` (Ray titles it `ray::Class...`)."""
    for process in psutil.Process(server_pid).children(recursive=True):
        try:
            if " ".join(process.cmdline()).startswith(f"ray::{actor_class}"):
                return process.pid
        except psutil.Error:
            continue
    raise RuntimeError(f"no {actor_class} process under the server")


def gauges(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    wanted = ("num_requests_running", "num_requests_waiting", "num_replicas")
    return {line.split("{")[0].split()[0]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith(tuple(f"mirrorspec:{w}" for w in wanted) + wanted)}


def recovery_s(outcomes: list[Outcome], kill_at: float) -> float | None:
    """From the kill to the end of the first good request that started after it and was answered right."""
    later = [o.ended for o in outcomes if o.checked and not o.wrong and o.started >= kill_at]
    return round(min(later) - kill_at, 2) if later else None


def summarize(outcomes: list[Outcome], kills: list[dict], memory: list[tuple[float, float]], start: float,
              gauges_after: dict) -> dict:
    by_kind: dict[str, Counter] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[o.code] += 1
    bad_codes = Counter(f"{o.detail}: {o.code}" for o in outcomes if o.kind == "bad")
    checked = [o for o in outcomes if o.checked]
    settled = [mb for t, mb in memory if t - start >= 60] or [mb for _, mb in memory]
    return {
        "requests": len(outcomes), "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "bad_requests": dict(sorted(bad_codes.items())),
        "unexpected": [f"{o.kind} {o.code} {o.detail}"[:200] for o in outcomes if not expected(o)],
        "answers_checked": len(checked), "answers_wrong": sum(o.wrong for o in checked),
        "tokens_lost": sum(o.tokens_lost for o in checked), "tokens_duplicated": sum(o.tokens_extra for o in checked),
        "kills": [{**k, "recovery_s": recovery_s(outcomes, start + k["at_s"])} for k in kills],
        "rss_mb": {"first": round(memory[0][1], 1), "after_60_s": round(settled[0], 1),
                   "max": round(max(mb for _, mb in memory), 1), "last": round(memory[-1][1], 1),
                   "growth_after_60_s": round(settled[-1] - settled[0], 1)},
        "gauges_after": gauges_after,
    }


def expected(o: Outcome) -> bool:
    """The statuses each kind may end with: a good request may fail UNAVAILABLE when its replica dies."""
    allowed = {"good_stream": {"OK", "UNAVAILABLE"}, "good_unary": {"OK", "UNAVAILABLE"}, "bad": {"INVALID_ARGUMENT"},
               "cancelled": {"CANCELLED", "OK", "UNAVAILABLE"}, "deadline": {"DEADLINE_EXCEEDED", "OK", "UNAVAILABLE"}}
    return o.code in allowed[o.kind] and not o.wrong


def plot(result: dict, outcomes: list[Outcome], memory: list[tuple[float, float]], start: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for kind in KINDS:
        ends = sorted(o.ended - start for o in outcomes if o.kind == kind)
        a.plot(ends, range(1, len(ends) + 1), label=kind)
    a.set_ylabel("requests ended (cumulative)")
    a.legend(loc="upper left", fontsize=8, frameon=False)
    b.plot([t - start for t, _ in memory], [mb for _, mb in memory], color="tab:gray")
    b.set_ylabel("server RSS, MB (process tree)")
    b.set_xlabel("seconds")
    for axis in (a, b):
        for kill in result["kills"]:
            axis.axvline(kill["at_s"], color="tab:red", lw=1, ls="--")
    for kill in result["kills"]:
        a.annotate(f"kill {kill['actor']}", (kill["at_s"], 0), fontsize=8, rotation=90, va="bottom", ha="right")
    a.set_title(f"soak: {result['requests']} requests, {result['answers_checked']} answers checked, "
                f"{result['answers_wrong']} wrong, tokens lost/duplicated {result['tokens_lost']}/"
                f"{result['tokens_duplicated']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="bench/configs/soak.yaml")
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--prompts", type=int, default=8, help="distinct prompts of the good requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="issue18-soak")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    texts = [row["prompt"] for row in load_prompts(None)][: args.prompts]
    server = Server(args.config, [])
    try:
        reference = {i: list(server.stub.Generate(request(t), timeout=600).responses[0].token_ids)
                     for i, t in enumerate(texts)}
        soak = Soak(server, texts, reference, args.seed)
        start = time.monotonic()
        stop_at = start + args.duration_s
        threads = [threading.Thread(target=soak.client, args=(i, stop_at), daemon=True) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        plan = [(args.duration_s / 3, "DrafterActor"), (2 * args.duration_s / 3, "ServingTargetActor")]
        memory, kills, next_sample = [], [], start
        while (now := time.monotonic()) < stop_at:
            if now >= next_sample:
                memory.append((now, tree_rss_mb(server.proc.pid)))
                next_sample += 5.0
            if plan and now - start >= plan[0][0]:
                _, actor = plan.pop(0)
                pid = actor_pid(server.proc.pid, actor)
                os.kill(pid, signal.SIGKILL)
                kills.append({"actor": actor, "pid": pid, "at_s": round(now - start, 1)})
            time.sleep(0.5)
        for thread in threads:
            thread.join(timeout=330)
        time.sleep(5)  # cancelled and timed-out requests leave the engine at its next step
        after = gauges(server.metrics_url) if server.metrics_url else {}
        memory.append((time.monotonic(), tree_rss_mb(server.proc.pid)))
    finally:
        exit_code = server.stop()
    result = {"setup": f"`mirrorspec serve --config {args.config}`, {args.clients} closed-loop clients, "
                       f"{args.duration_s:.0f} s, {len(texts)} prompts x {MAX_NEW} new tokens, greedy, chat",
              **summarize(soak.outcomes, kills, memory, start, after), "server_exit_code": exit_code}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, soak.outcomes, memory, start, out / f"{args.name}.png")
    print(json.dumps(result, indent=1))
    return 0 if not result["unexpected"] and result["tokens_lost"] == result["tokens_duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
