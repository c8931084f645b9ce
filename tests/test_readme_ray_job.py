"""The README's Ray job commands, as written: `mirrorspec cluster up`, `ray job submit` of the batch job, `mirrorspec
cluster down`, against a cluster of the test's own (Ray 2.60's token auth on), from an empty folder; every row is
answered and nothing of the cluster is left running."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.real_model

README = Path(__file__).parents[1] / "README.md"


def readme_block(after: str) -> str:
    """The first fenced block after the line that starts with `after`."""
    text = README.read_text(encoding="utf-8")
    return re.search(r"```\n(.*?)```", text[text.index(after):], re.S).group(1)


def ray_processes() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("gcs_server", "raylet")}


def test_the_readme_ray_job_runs_as_written(tmp_path):
    block = readme_block("Batch generation as a Ray job")
    assert "mirrorspec cluster up" in block and "ray job submit" in block and "mirrorspec cluster down" in block
    rows = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(["Name a colour.", "What is 2 + 3?"])]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = ray_processes()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MIRRORSPEC_CLUSTER_STATE": str(tmp_path / "cluster.json")}
    env.pop("RAY_ADDRESS", None)
    try:
        run = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    finally:  # a failed line leaves the block early: stop the test's cluster regardless
        subprocess.run([sys.executable, "-m", "mirrorspec.cli.main", "cluster", "down"], env=env, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    answers = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert sorted(a["id"] for a in answers) == ["r0", "r1"] and all(a["text"].strip() for a in answers)
    assert "stopped the Ray cluster" in run.stderr and not (tmp_path / "cluster.json").exists()
    assert ray_processes() <= before  # its GCS and raylet are gone; any other Ray on the machine is untouched
