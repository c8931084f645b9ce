"""The batch job as a user runs it: `ray start`, `ray job submit`, a crash halfway, a rerun.

1. `mirrorspec cluster up` (the project's own `ray start --head` on free loopback ports, Ray's token auth on).
2. A clean run: `ray job submit -- python -m mirrorspec.cluster.batch_job --input P --output clean ...`.
3. The same job into another folder, and once at least half of the rows are answered the whole cluster is killed
   (every process of that cluster SIGKILLed at once, by pid: driver, replicas and Ray itself die mid-batch, as in
   a machine crash); `mirrorspec cluster up` again.
4. The same `ray job submit` again: it must skip what is answered, finish the rest, and end with every row once and
   every answer equal to the clean run's (greedy decoding is batch-invariant, so batches may differ).

    python -m mirrorspec.bench.batch_job_resume --rows 200 --name issue7-batch-job-resume

Writes bench/results/NAME.json. Stops only the clusters it started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirrorspec.cluster import local_cluster
from mirrorspec.cluster.local_cluster import ray_bin
from mirrorspec.cluster.batch_job import read_parts
from mirrorspec.training.prompt_bank import generate_prompts


def sh(*cmd: str, check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def start_cluster(cpus: int) -> float:
    """`mirrorspec cluster up`, and its job API for `ray job submit`; seconds until a job can run."""
    start = time.perf_counter()
    record = local_cluster.up(cpus)
    os.environ.update({"RAY_ADDRESS": record["address"], "RAY_AUTH_MODE": "token"})
    return time.perf_counter() - start


def job_command(args: argparse.Namespace, prompts: Path, out: Path, *, wait: bool = True) -> list[str]:
    return [ray_bin(), "job", "submit", *([] if wait else ["--no-wait"]), "--", sys.executable, "-m",
            "mirrorspec.cluster.batch_job", "--input", str(prompts), "--output", str(out),
            "--max-new-tokens", str(args.max_new_tokens), "--method", args.method, "--replicas", str(args.replicas),
            "--batch-size", str(args.batch_size), "--chat", "--merge"]


def submit(args: argparse.Namespace, prompts: Path, out: Path) -> tuple[dict, float]:
    """A blocking `ray job submit` (it follows the job's log until the job ends); the job's summary.json."""
    start = time.perf_counter()
    sh(*job_command(args, prompts, out))
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - start


def crash_halfway(args: argparse.Namespace, prompts: Path, out: Path) -> dict:
    """Submit without waiting, watch the part files, and kill every Ray process once half the rows are in."""
    start = time.perf_counter()
    sh(*job_command(args, prompts, out, wait=False))
    while len(read_parts(out)) < args.rows // 2:
        if time.perf_counter() - start > 1800:
            raise RuntimeError("the job answered too little in 30 minutes")
        time.sleep(0.5)
    at_kill = len(read_parts(out))
    local_cluster.down(crash=True)
    return {"rows_answered_when_killed": at_kill, "killed_after_s": round(time.perf_counter() - start, 2),
            "temporary_files_left": len(list(out.glob(".tmp-*")))}


def check(out: Path, reference: dict[str, list[int]], ids: list[str]) -> dict:
    lines = read_parts(out)
    answered = [r["id"] for r in lines]
    return {"lines_in_part_files": len(lines), "distinct_ids": len(set(answered)),
            "missing": len(set(ids) - set(answered)), "duplicates": len(answered) - len(set(answered)),
            "answers_equal_to_clean_run": sum(r["token_ids"] == reference[r["id"]] for r in lines),
            "errors": sum(bool(r.get("error")) for r in lines)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--method", default="chain")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cpus", type=int, default=2, help="CPUs the `ray start` cluster offers")
    p.add_argument("--work", help="folder for the prompts and outputs (default: a new temporary one)")
    p.add_argument("--name", default="issue7-batch-job-resume")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    work = Path(args.work or tempfile.mkdtemp(prefix="batch-job-"))
    prompts = work / "prompts.jsonl"
    rows = [{"id": f"row-{i:04d}", "prompt": r["prompt"]} for i, r in enumerate(generate_prompts(args.rows))]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ids = [r["id"] for r in rows]

    results: dict = {"command": "python -m mirrorspec.bench.batch_job_resume " + " ".join(sys.argv[1:]),
                     "job": " ".join(job_command(args, Path("PROMPTS"), Path("OUT"))[1:]),
                     "ray_start_s": round(start_cluster(args.cpus), 2)}
    try:
        clean, clean_s = submit(args, prompts, work / "clean")
        reference = {r["id"]: r["token_ids"] for r in read_parts(work / "clean")}
        results["clean_run"] = {"summary": clean, "submit_to_end_s": round(clean_s, 2),
                                "check": check(work / "clean", reference, ids)}
        results["crash"] = crash_halfway(args, prompts, work / "resumed")
        results["ray_restart_s"] = round(start_cluster(args.cpus), 2)
        resumed, resumed_s = submit(args, prompts, work / "resumed")
        results["rerun"] = {"summary": resumed, "submit_to_end_s": round(resumed_s, 2),
                            "check": check(work / "resumed", reference, ids)}
    finally:
        local_cluster.down()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    ok = results["rerun"]["check"]
    return 0 if ok["missing"] == ok["duplicates"] == 0 and ok["answers_equal_to_clean_run"] == args.rows else 1


if __name__ == "__main__":
    sys.exit(main())
