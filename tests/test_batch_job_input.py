"""The batch job checks its input before any Ray work starts: a bad line is that row's error (errors.jsonl, with
its file and line), duplicate ids and a file as the output folder stop it with exit 2 and the field named, and an
input with no good rows gives an empty summary (Arrow would otherwise fail a Ray task, or a duplicate be dropped)."""

import json

import pytest

from mirrorspec.cluster import batch_job
from mirrorspec.errors import InvalidRequestError

GOOD = {"id": "a", "prompt": "Hello"}


def write_lines(path, lines) -> None:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
                              for line in lines))


def test_bad_lines_become_per_row_errors_named_by_file_and_line(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    bad = [({"prompt": "no id"}, 'a row needs an "id"'), ({"id": None, "prompt": "x"}, 'a row needs an "id"'),
           (b"{not json", "is not valid JSON"), ({"id": "b", "prompt": 5}, 'a string "prompt"'),
           (b'{"id": "c", "prompt": "\xff"}', "is not UTF-8 text"), (b"[1, 2]", 'a string "prompt"')]
    write_lines(source, [line for line, _ in bad])
    assert batch_job.main(["--input", str(source), "--output", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 0 and summary["rejected"] == len(bad) and summary["rows_this_run"] == 0
    errors = [json.loads(line) for line in (tmp_path / "out" / batch_job.ERRORS).read_text().splitlines()]
    assert [e["line"] for e in errors] == [f"{source}:{n}" for n in range(1, len(bad) + 1)]
    for error, (_, message) in zip(errors, bad):
        assert error["error"].startswith("input: ") and message in error["error"]


def test_mixed_id_kinds_are_one_column_of_strings_and_messages_travel_as_json():
    assert batch_job.parse_row(b'{"id": 7, "prompt": "x"}', "f:1") == {"id": "7", "prompt": "x", "messages": None}
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    row = batch_job.parse_row(json.dumps({"id": "m", "messages": turns}).encode(), "f:2")
    assert row["id"] == "m" and json.loads(row["messages"]) == turns
    with pytest.raises(InvalidRequestError, match=r"f:3: messages\[0\].role: must be one of"):
        batch_job.parse_row(json.dumps({"id": "m", "messages": [{"role": "bot", "content": "x"}]}).encode(), "f:3")


def test_an_empty_input_gives_an_empty_summary(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text("\n")
    assert batch_job.main(["--input", str(source), "--output", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == summary["rejected"] == summary["answered"] == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_duplicate_ids_are_refused_with_the_list(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    write_lines(source, [GOOD, {"id": "b", "prompt": "x"}, {"id": "a", "prompt": "again"}, {"id": "b", "prompt": "y"}])
    assert batch_job.main(["--input", str(source), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: input: 2 duplicate id(s):" in err
    assert f"'a' ({source}:1 and {source}:3)" in err and f"'b' ({source}:2 and {source}:4)" in err
    assert not (tmp_path / "out").exists()


def test_duplicate_parquet_ids_and_a_file_as_output_are_refused(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2, 1], "prompt": ["x", "y", "z"]}), table)
    assert batch_job.main(["--input", str(table), "--output", str(tmp_path / "out")]) == 2
    assert "error: input: 1 duplicate id(s): ['1']" in capsys.readouterr().err
    source = tmp_path / "in.jsonl"
    write_lines(source, [GOOD])
    (tmp_path / "taken").write_text("")
    assert batch_job.main(["--input", str(source), "--output", str(tmp_path / "taken")]) == 2
    assert "error: output:" in capsys.readouterr().err
