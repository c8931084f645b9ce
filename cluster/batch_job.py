"""Batch generation over a whole dataset as a Ray job, resumable:

    ray job submit -- python -m mirrorspec.cluster.batch_job --input prompts.jsonl --output OUT_DIR

Reads JSONL or Parquet rows (`id`, `prompt`; the stable id is what lets a rerun resume) through `ray.data`.
JSONL is checked line by line before any Ray work: a line that is not UTF-8, not JSON, or lacks an `id` and a
string `prompt` (or chat `messages`) is that row's error, written with its file:line to OUT_DIR/errors.jsonl while
the other rows run; duplicate ids stop the job before it starts (exit 2, listed). The rows run on a pool of engine
replicas (`--replicas N`, or `--min-replicas/--max-replicas` for ray.data's autoscaling actor pool, which grows
with the backlog) and the answers are written through a ray.data datasink: each
block to its own part file under OUT_DIR, atomically (a temporary name, then a rename). Ray Data's own file
datasinks write in place, so a kill could leave a truncated file that a rerun would misread. After a crash or a
kill a rerun reads the part files, skips every id already answered and generates the rest: no row is lost or
answered twice. At the end `summary.json` gives rows, tokens, tokens/s and tau, and `--merge` writes all answers,
one per id, sorted by id, to OUT_DIR/answers.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.outputs import RequestOutput, error_output
from mirrorspec.orchestration.prompts import add_chat_args, check_messages, is_messages

logger = logging.getLogger(__name__)

PART_GLOB = "part-*.jsonl"
ERRORS = "errors.jsonl"  # the input lines rejected, each with its file:line and error


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="prompts: a .jsonl or .parquet file (or folder of them)")
    p.add_argument("--output", required=True, help="output folder (part files, summary.json)")
    p.add_argument("--config", help="ray_config.yaml (engine and speculation defaults)")
    p.add_argument("--method", help="decoding method (default: speculation.method)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    add_chat_args(p)
    p.add_argument("--batch-size", type=int, default=8, help="rows per engine call (and per part file)")
    p.add_argument("--replicas", type=int, help="a fixed number of engine replicas")
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaling pool: at least this many")
    p.add_argument("--max-replicas", type=int, default=2, help="autoscaling pool: at most this many")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--serve", action="store_true",
                   help="send the rows to Ray Serve engine replicas, the serving path (each replica's engine batches "
                        "rows continuously): the running mirrorspec Serve application's, else --replicas N (Serve's "
                        "num_replicas, from the config's cluster.target) deployed for this job")
    p.add_argument("--merge", action="store_true", help="also write answers.jsonl, sorted by id")


def read_parts(output: Path) -> list[dict]:
    """Every answer in the part files, duplicates included (a part file exists only once it is whole)."""
    return [json.loads(line) for part in output.glob(PART_GLOB)
            for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]


def finished_ids(output: Path) -> set[str]:
    """Ids already answered."""
    return {record["id"] for record in read_parts(output)}


class Generator:
    """One engine replica in ray.data's actor pool: answers a batch of rows."""

    def __init__(self, engine_config, spec, sampling, chat: bool) -> None:
        from mirrorspec.orchestration.factory import build_engine

        self.engine = build_engine(engine_config)
        self.spec, self.sampling, self.chat = spec, sampling, chat

    def __call__(self, batch: dict) -> dict:
        return answers(batch, self.engine.generate(prompts_of(batch), self.sampling, self.spec, chat=self.chat))


class ServeRows:
    """A ray.data worker that sends its rows to the Serve application's EngineReplica deployment, as the serving
    fronts do: Serve routes each row to a replica with room, whose engine batches it with every request in flight
    (continuous batching across rows and workers). It holds no engine: it takes no CPU of its own."""

    def __init__(self, project, spec, sampling, chat: bool) -> None:
        from ray import serve

        from mirrorspec.cluster.serve_replicas import APP, DEPLOYMENT, ServeBackend
        from mirrorspec.workers.models import load_model_info

        info = load_model_info(project.engine.target)
        self.tokenizer, self.vocab_size = info.tokenizer, info.config.vocab_size
        self.backend = ServeBackend(project, serve.get_deployment_handle(DEPLOYMENT, APP))
        self.spec, self.sampling, self.chat = spec, sampling, chat

    def __call__(self, batch: dict) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        prompts = prompts_of(batch)
        # The batch's rows in flight at once, up to what may wait for a replica (more would be refused)
        with ThreadPoolExecutor(min(len(prompts), self.backend.project.serve.max_queued_requests)) as pool:
            return answers(batch, list(pool.map(self._answer, range(len(prompts)), prompts)))

    def _answer(self, index: int, prompt) -> RequestOutput:
        from mirrorspec.orchestration.prompts import encode_prompt

        try:
            ids = encode_prompt(self.tokenizer, self.vocab_size, prompt, self.chat)
            last = None
            for last in self.backend.submit(ids, self.sampling, self.spec):
                pass
            return last
        except InvalidRequestError as exc:  # this row's error; the others run
            return error_output(f"invalid-{index}", exc)


def prompts_of(batch: dict) -> list:
    messages = batch.get("messages", [None] * len(batch["prompt"]))
    # A column with no messages at all reaches here as NaN floats (Arrow's null type), not None.
    return [json.loads(m) if isinstance(m, str) else str(p) for p, m in zip(batch["prompt"], messages)]


def answers(batch: dict, outs: list[RequestOutput]) -> dict:
    return {"id": [str(i) for i in batch["id"]], "text": [o.text for o in outs],
            "token_ids": [o.token_ids for o in outs], "finish_reason": [o.finish_reason for o in outs],
            "target_forwards": [o.stats.target_forwards for o in outs], "error": [o.error for o in outs]}


class AnswerParts(Datasink):
    """Writes each block of answers to its own part file, atomically; sums rows, tokens and target forwards."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.totals: Counter = Counter()

    def write(self, blocks, ctx) -> Counter:
        written: Counter = Counter()
        for block in blocks:
            records = BlockAccessor.for_block(block).to_arrow().to_pylist()
            if not records:
                continue
            ids = [r["id"] for r in records]
            name = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]  # a retried block rewrites its own file
            tmp = self.output / f".tmp-{name}-{os.getpid()}"
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            tmp.rename(self.output / f"part-{name}.jsonl")  # atomic: a part file is whole or absent
            written["rows"] += len(records)
            written["tokens"] += sum(len(r["token_ids"]) for r in records)
            written["forwards"] += sum(r["target_forwards"] for r in records)
        logger.warning("progress: %d more answers in %s", written["rows"], self.output)
        return written

    def on_write_complete(self, write_result) -> None:
        self.totals = sum(write_result.write_returns, Counter())


def parse_row(line: bytes, where: str) -> dict:
    """One JSONL line as {"id", "prompt", "messages"}, or InvalidRequestError saying what is wrong with it."""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequestError("input", f"{where} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError("input", f"{where} is not valid JSON: {exc.msg}") from None
    if not isinstance(row, dict) or not (isinstance(row.get("prompt"), str) or is_messages(row.get("messages"))):
        raise InvalidRequestError("input", f"{where}: a row is an object with a string \"prompt\" or a list of chat "
                                           f"\"messages\"")
    if type(row.get("id")) not in (str, int):
        raise InvalidRequestError("input", f"{where}: a row needs an \"id\", a string or an integer (a stable id is "
                                           f"what makes reruns resume)")
    if isinstance(row.get("prompt"), str):
        return {"id": str(row["id"]), "prompt": row["prompt"], "messages": None}
    try:  # one Arrow column of text: the messages travel as JSON
        return {"id": str(row["id"]), "prompt": "", "messages": json.dumps(check_messages(row["messages"], "messages"))}
    except InvalidRequestError as exc:
        raise InvalidRequestError("input", f"{where}: {exc}") from None


def load_jsonl(files: list[Path]) -> tuple[list[dict], list[dict]]:
    """The rows of JSONL inputs and the lines rejected (each with its file:line and error), read before any Ray
    work starts. A bad line is that row's error, not the job's; duplicate ids are fatal (which answer would be
    kept?), listed."""
    rows: list[dict] = []
    rejected: list[dict] = []
    first_seen: dict[str, str] = {}
    duplicates: list[str] = []
    for file in files:
        for number, line in enumerate(file.read_bytes().split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                row = parse_row(line, where)
            except InvalidRequestError as exc:
                rejected.append({"line": where, "error": str(exc)})
                continue
            if row["id"] in first_seen:
                duplicates.append(f"{row['id']!r} ({first_seen[row['id']]} and {where})")
            first_seen.setdefault(row["id"], where)
            rows.append(row)
    if duplicates:
        shown = "; ".join(duplicates[:5]) + (f"; and {len(duplicates) - 5} more" if len(duplicates) > 5 else "")
        raise InvalidRequestError("input", f"{len(duplicates)} duplicate id(s): {shown}")
    return rows, rejected


def check_parquet_ids(path: str) -> int:
    """Duplicate ids in a Parquet input are refused before any Ray work starts, as in JSONL; its row count."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path) if Path(path).is_file() else pq.ParquetDataset(path).schema
    missing = [name for name in ("id", "prompt") if name not in schema.names]
    if missing:
        raise InvalidRequestError("input", f"rows need {missing} column(s); found {schema.names}")
    ids = pc.cast(pq.read_table(path, columns=["id"]).column("id"), "string")
    counts = pc.value_counts(ids)
    repeated = [str(c["values"]) for c in counts.to_pylist() if c["counts"] > 1]
    if repeated:
        raise InvalidRequestError("input", f"{len(repeated)} duplicate id(s): {repeated[:5]}")
    return len(ids)


def load_input(path: str) -> tuple[list[dict] | None, list[dict], int]:
    """(rows, rejected lines, good rows) of a JSONL input; (None, [], rows) for Parquet, which ray.data reads
    itself."""
    source = Path(path)
    if not source.exists():
        raise InvalidRequestError("input", f"{path!r} does not exist")
    if source.suffix == ".parquet" or (source.is_dir() and any(source.glob("*.parquet"))):
        return None, [], check_parquet_ids(path)
    rows, rejected = load_jsonl(sorted(source.glob("*.jsonl")) if source.is_dir() else [source])
    return rows, rejected, len(rows)


def unanswered_parquet(path: str, done: set[str]):
    """The Parquet input's rows whose ids are not in `done`, as a ray.data dataset."""
    import ray.data

    # Reading, filtering and writing rows is light I/O: with no CPU reserved it runs while the replicas hold every
    # CPU (reserving one deadlocks a pool of as many replicas as the cluster has CPUs: Ray Data waits for a CPU that
    # the pool never frees).
    dataset = ray.data.read_parquet(path, num_cpus=0).select_columns(["id", "prompt"], num_cpus=0)
    with warnings.catch_warnings():  # Ray suggests expressions; membership in a Python set is not one
        warnings.filterwarnings("ignore", message="Use 'expr' instead of 'fn'")
        return dataset.filter(fn=lambda row: str(row["id"]) not in done, num_cpus=0)


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    from mirrorspec.cluster.config import find_config, for_own_target, load_config
    from mirrorspec.params import SamplingParams

    config = load_config(find_config(args.config))
    spec = dataclasses.replace(config.speculation, **({"method": args.method} if args.method else {}))
    engine, spec = for_own_target(config.engine, spec, method_given=bool(args.method))
    config = dataclasses.replace(config, engine=engine, speculation=spec)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature).validate()
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise InvalidRequestError("output", f"{args.output!r} is a file; give a folder for the part files")
    rows, rejected, count = load_input(args.input)
    output.mkdir(parents=True, exist_ok=True)
    (output / ERRORS).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected),
                                 encoding="utf-8")
    done = finished_ids(output)
    summary = {"rows": count, "rejected": len(rejected), "answered": len(done), "resumed_from": len(done),
               "rows_this_run": 0, "tokens_this_run": 0, "seconds": 0.0, "tokens_per_s": None, "tau": None,
               "method": spec.method, "replicas": 0}
    pending = None if rows is None else [row for row in rows if row["id"] not in done]
    if pending != []:  # nothing left to answer (no good rows, or all answered): no Ray at all
        summary |= generate(args, config, spec, sampling, pending, done)
    (output / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.merge:
        merge(output)
    return summary


def generate(args: argparse.Namespace, config, spec, sampling, pending: list[dict] | None, done: set[str]) -> dict:
    """Answers the pending JSONL rows (None: the Parquet input's rows not in `done`) on a pool of replicas; the
    summary's counts for this run."""
    import dataclasses

    import ray.data

    from mirrorspec.cluster.ray_cluster import connect

    output = Path(args.output)
    owned = not ray.is_initialized()  # a Ray session this job started is this job's to end
    connect(config.cluster)
    todo = ray.data.from_items(pending) if pending is not None else unanswered_parquet(args.input, done)
    concurrency = args.replicas or (args.min_replicas, args.max_replicas)
    pool = (ray.data.ActorPoolStrategy(size=args.replicas) if args.replicas
            else ray.data.ActorPoolStrategy(min_size=args.min_replicas, max_size=args.max_replicas))
    deployed = None
    started = time.perf_counter()
    if args.serve:
        deployed, concurrency = serve_replicas(config, args.replicas)
        answered = todo.map_batches(ServeRows, batch_size=args.batch_size, compute=pool, num_cpus=0,
                                    fn_constructor_kwargs={"project": config, "spec": spec, "sampling": sampling,
                                                           "chat": args.chat})
    else:
        engine = dataclasses.replace(config.engine, threads=max(1, int(args.cpus_per_replica)))
        answered = todo.map_batches(Generator, batch_size=args.batch_size, compute=pool,
                                    num_cpus=args.cpus_per_replica,
                                    fn_constructor_kwargs={"engine_config": engine, "spec": spec,
                                                           "sampling": sampling, "chat": args.chat})
    sink = AnswerParts(output)
    try:
        answered.write_datasink(sink, ray_remote_args={"num_cpus": 0})
    finally:
        if deployed is not None:
            deployed.shutdown()
    seconds = time.perf_counter() - started
    rows_now, tokens, forwards = sink.totals["rows"], sink.totals["tokens"], sink.totals["forwards"]
    counts = {"answered": len(finished_ids(output)), "rows_this_run": rows_now, "tokens_this_run": tokens,
              "seconds": round(seconds, 2),
              "tokens_per_s": round(tokens / seconds, 2) if seconds else None,
              "tau": round(tokens / forwards, 3) if forwards else None, "replicas": concurrency}
    if owned:
        ray.shutdown()
    return counts


def serve_replicas(config, replicas: int | None):
    """--serve: the running mirrorspec Serve application's replicas (None to undeploy), or `replicas` of them
    deployed for this job (their ServeBackend, to undeploy when done); and how many serve."""
    import dataclasses

    from mirrorspec.cluster.serve_replicas import APP, deploy_replicas, serve, serve_running

    if serve_running() and APP in serve.status().applications:
        return None, "the running application's"
    project = dataclasses.replace(config, serve=dataclasses.replace(config.serve, replicas=replicas or 1))
    return deploy_replicas(project), replicas or 1


def merge(output: Path) -> None:
    by_id = {record["id"]: record for record in read_parts(output)}
    with (output / "answers.jsonl").open("w", encoding="utf-8") as f:
        for record in sorted(by_id.values(), key=lambda r: (len(r["id"]), r["id"])):
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
