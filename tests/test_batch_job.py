"""The batch job on the session's Ray cluster: a rerun after a run that was killed (its process, mid-job)
answers only the missing rows, so every row is answered exactly once, and the answers equal the engine's own; a
malformed line is reported in errors.jsonl while the other rows run, and a row of chat messages is answered too.
(--serve, the rows through the Serve application's replicas: tests/test_serve_app.py.)"""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import wait_until
from mirrorspec.cluster import batch_job
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.factory import build_engine
from mirrorspec.params import SamplingParams, SpecParams

pytestmark = pytest.mark.real_model

ROWS = 9  # three part files of three rows: the kill lands after the first


def job_args(tmp_path, out_name: str) -> list[str]:
    return ["--input", str(tmp_path / "prompts.jsonl"), "--output", str(tmp_path / out_name), "--max-new-tokens",
            "6", "--method", "ar", "--replicas", "1", "--batch-size", "3", "--merge"]


def run(tmp_path, out_name: str) -> dict:
    return batch_job.run(batch_job.build_parser().parse_args(job_args(tmp_path, out_name)))


def answers(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]


def test_a_rerun_after_a_killed_job_answers_only_what_is_missing(ray_cluster, tmp_path):
    rows = [{"id": f"q{i:02d}", "prompt": f"Name a fruit that starts with the letter {chr(65 + i)}."}
            for i in range(ROWS)]
    rows[3] = {"id": rows[3]["id"], "messages": [{"role": "system", "content": "Answer in one word."},
                                                 {"role": "user", "content": rows[3]["prompt"]}]}
    lines = [json.dumps(r) for r in rows]
    lines.insert(4, '{"id": "broken", "prompt": ')  # a malformed line is its own error; the other rows run
    (tmp_path / "prompts.jsonl").write_text("".join(line + "\n" for line in lines))
    # The clean answers, from the same engine in this process (greedy `ar` on the exact path: batch-invariant).
    engine = build_engine(EngineConfig(drafter=None, max_batch=4))
    outs = engine.generate([r.get("prompt", r.get("messages")) for r in rows], SamplingParams(max_new_tokens=6),
                           SpecParams("ar"))
    reference = {r["id"]: o.token_ids for r, o in zip(rows, outs)}
    # The same job as its own process on the same cluster, killed (SIGKILL) once it has written a part file.
    interrupted = tmp_path / "resumed"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    job = subprocess.Popen([sys.executable, "-m", "mirrorspec.cluster.batch_job", *job_args(tmp_path, "resumed")],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: job.poll() is not None or any(interrupted.glob(batch_job.PART_GLOB)), 240,
                   "the job wrote no part file", period_s=0.05)
        assert job.poll() is None, job.stderr.read()  # still running: the kill lands mid-job
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    kept = batch_job.finished_ids(interrupted)
    assert 0 < len(kept) < ROWS
    resumed = run(tmp_path, "resumed")
    assert resumed["resumed_from"] == len(kept) and resumed["rows_this_run"] == ROWS - len(kept)
    assert resumed["answered"] == ROWS and resumed["rejected"] == 1
    [error] = [json.loads(line) for line in (interrupted / batch_job.ERRORS).read_text().splitlines()]
    assert error["line"].endswith("prompts.jsonl:5") and "is not valid JSON" in error["error"]
    merged = answers(interrupted)
    assert sorted(a["id"] for a in merged) == sorted(r["id"] for r in rows)  # each row once
    assert {a["id"]: a["token_ids"] for a in merged} == reference
