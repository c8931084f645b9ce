"""The batch job on the session's Ray cluster: a rerun after an interrupted run answers only the missing rows,
so every row is answered exactly once, and the answers equal a clean run's."""

import json

import pytest

from mirrorspec.cluster import batch_job

pytestmark = pytest.mark.real_model


def run(tmp_path, out_name: str, extra=()) -> dict:
    args = batch_job.build_parser().parse_args(["--input", str(tmp_path / "prompts.jsonl"), "--output",
                                                str(tmp_path / out_name), "--max-new-tokens", "6", "--method", "ar",
                                                "--replicas", "1", "--batch-size", "3", "--merge", *extra])
    return batch_job.run(args)


def answers(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]


def test_a_rerun_answers_only_what_is_missing(ray_cluster, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Name a fruit that starts with the letter {chr(65 + i)}."} for i in range(9)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clean = run(tmp_path, "clean")
    assert clean["answered"] == 9 and clean["rows_this_run"] == 9
    reference = {a["id"]: a["token_ids"] for a in answers(tmp_path / "clean")}
    # An interrupted run: its completed part files survive (here: the clean run's first one), a half-written
    # temporary file does not count.
    interrupted = tmp_path / "resumed"
    interrupted.mkdir()
    first = sorted((tmp_path / "clean").glob("part-*.jsonl"))[0]
    kept = {json.loads(line)["id"] for line in first.read_text().splitlines()}
    (interrupted / first.name).write_text(first.read_text())
    (interrupted / ".tmp-partial-1").write_text('{"id": "q0", "text": "trunc')
    resumed = run(tmp_path, "resumed")
    assert resumed["resumed_from"] == len(kept) and resumed["rows_this_run"] == 9 - len(kept)
    merged = answers(interrupted)
    assert sorted(a["id"] for a in merged) == sorted(r["id"] for r in rows)  # each row once
    assert {a["id"]: a["token_ids"] for a in merged} == reference
