"""Batch generation over a whole dataset as a Ray job, resumable:

    ray job submit -- python -m mirrorspec.cluster.batch_job --input prompts.jsonl --output OUT_DIR

Reads JSONL or Parquet rows (`id`, `prompt`; the stable id is what lets a rerun resume) through `ray.data`,
and runs them on a pool of engine replicas (`--replicas N`, or `--min-replicas/--max-replicas` for ray.data's
autoscaling actor pool, which grows with the backlog). Each batch of answers is written to its own part file
under OUT_DIR atomically (a temporary name, then a rename), so after a crash or a kill a rerun reads the part files,
skips every id already answered and generates the rest: no row is lost or answered twice. At the end `summary.json`
gives rows, tokens, tokens/s and tau, and `--merge` writes all answers, sorted by id, to OUT_DIR/answers.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from mirrorspec.orchestration.errors import InvalidRequestError

logger = logging.getLogger(__name__)

PART_GLOB = "part-*.jsonl"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="prompts: a .jsonl or .parquet file (or folder of them)")
    p.add_argument("--output", required=True, help="output folder (part files, summary.json)")
    p.add_argument("--config", help="ray_config.yaml (engine and speculation defaults)")
    p.add_argument("--method", help="decoding method (default: speculation.method)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--batch-size", type=int, default=8, help="rows per engine call (and per part file)")
    p.add_argument("--replicas", type=int, help="a fixed number of engine replicas")
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaling pool: at least this many")
    p.add_argument("--max-replicas", type=int, default=2, help="autoscaling pool: at most this many")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--merge", action="store_true", help="also write answers.jsonl, sorted by id")


def read_parts(output: Path) -> list[dict]:
    """Every answer in the part files, duplicates included (a part file exists only once it is whole)."""
    return [json.loads(line) for part in output.glob(PART_GLOB)
            for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]


def finished_ids(output: Path) -> set[str]:
    """Ids already answered."""
    return {record["id"] for record in read_parts(output)}


class Generator:
    """One engine replica in ray.data's actor pool: answers a batch and writes its part file."""

    def __init__(self, engine_config, spec, sampling, output: str, chat: bool) -> None:
        from mirrorspec.orchestration.engine import Engine

        self.engine = Engine.from_config(engine_config)
        self.spec, self.sampling, self.output, self.chat = spec, sampling, Path(output), chat

    def __call__(self, batch: dict) -> dict:
        ids, prompts = [str(i) for i in batch["id"]], [str(p) for p in batch["prompt"]]
        outs = self.engine.generate(prompts, self.sampling, self.spec, chat=self.chat)
        lines = []
        for row_id, out in zip(ids, outs):
            record = {"id": row_id, "text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                      "target_forwards": out.stats.target_forwards, "error": out.error}
            lines.append(json.dumps(record, ensure_ascii=False))
        name = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]
        tmp = self.output / f".tmp-{name}-{os.getpid()}"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.rename(self.output / f"part-{name}.jsonl")  # atomic: a part file is whole or absent
        return {"id": ids, "tokens": [len(o.token_ids) for o in outs],
                "forwards": [o.stats.target_forwards for o in outs]}


def read_rows(path: str):
    import ray.data

    source = Path(path)
    if not source.exists():
        raise InvalidRequestError("input", f"{path!r} does not exist")
    parquet = source.suffix == ".parquet" or (source.is_dir() and any(source.glob("*.parquet")))
    # Reading and filtering rows is light I/O: with no CPU reserved it runs while the replicas hold every CPU
    # (reserving one deadlocks a pool of as many replicas as the cluster has CPUs: Ray Data waits for a CPU that
    # the pool never frees).
    light = {"num_cpus": 0}
    ds = (ray.data.read_parquet(path, ray_remote_args=light) if parquet
          else ray.data.read_json(path, lines=True, ray_remote_args=light))
    columns = ds.columns()
    if "prompt" not in columns:
        raise InvalidRequestError("input", f"rows need a 'prompt' column; found {columns}")
    if "id" not in columns:
        raise InvalidRequestError("input", "rows need an 'id' column (a stable id is what makes reruns resume)")
    return ds.select_columns(["id", "prompt"], **light)


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    import ray

    from mirrorspec.cluster.config import find_config, load_config
    from mirrorspec.cluster.ray_cluster import connect
    from mirrorspec.orchestration.params import SamplingParams

    config = load_config(find_config(args.config))
    spec = dataclasses.replace(config.speculation, **({"method": args.method} if args.method else {}))
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature).validate()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    owned = not ray.is_initialized()  # a Ray session this job started is this job's to end
    connect(config.cluster)
    done = finished_ids(output)
    rows = read_rows(args.input)
    todo = rows.filter(lambda row: str(row["id"]) not in done, num_cpus=0)
    concurrency = args.replicas or (args.min_replicas, args.max_replicas)
    engine = dataclasses.replace(config.engine, threads=max(1, int(args.cpus_per_replica)))
    started = time.perf_counter()
    results = todo.map_batches(Generator, batch_size=args.batch_size, concurrency=concurrency,
                               num_cpus=args.cpus_per_replica,
                               fn_constructor_kwargs={"engine_config": engine, "spec": spec, "sampling": sampling,
                                                      "output": str(output), "chat": args.chat})
    rows_now = tokens = forwards = 0
    for batch in results.iter_batches(batch_size=None):
        rows_now += len(batch["id"])
        tokens += int(sum(batch["tokens"]))
        forwards += int(sum(batch["forwards"]))
        logger.warning("progress: %d rows this run, %d before", rows_now, len(done))
    seconds = time.perf_counter() - started
    all_ids = finished_ids(output)
    summary = {"rows": rows.count(), "answered": len(all_ids), "resumed_from": len(done), "rows_this_run": rows_now,
               "tokens_this_run": tokens, "seconds": round(seconds, 2),
               "tokens_per_s": round(tokens / seconds, 2) if seconds else None,
               "tau": round(tokens / forwards, 3) if forwards else None, "method": spec.method,
               "replicas": concurrency}
    (output / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.merge:
        merge(output)
    if owned:
        ray.shutdown()
    return summary


def merge(output: Path) -> None:
    records = read_parts(output)
    records.sort(key=lambda r: (len(r["id"]), r["id"]))
    with (output / "answers.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mirrorspec.cluster.batch_job", description=__doc__.split("\n")[0])
    add_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(json.dumps(run(args), indent=1))
    except InvalidRequestError as exc:
        print(f"batch_job: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
