"""The batch job refuses a bad input file or output path before any Ray work starts: exit 2, the field named,
and for a bad row its file and line (Arrow would otherwise fail a Ray task, or a duplicate id be dropped)."""

import json

import pytest

from mirrorspec.cluster import batch_job

GOOD = {"id": "a", "prompt": "Hello"}


@pytest.mark.parametrize("lines, message", [
    ([GOOD, {"prompt": "no id"}], ":2: a row needs an \"id\""),
    ([GOOD, {"id": 7, "prompt": "x"}], ":2: ids mix strings and integers"),
    ([GOOD, {"id": "a", "prompt": "again"}], ":2: id 'a' is already used at"),
    ([GOOD, "{not json"], ":2 is not valid JSON"),
    ([GOOD, {"id": "b", "prompt": 5}], ":2: a row is an object with a string \"prompt\""),
    ([GOOD, {"id": None, "prompt": "x"}], ":2: a row needs an \"id\""),
    ([], "has no rows"),
])
def test_a_bad_row_is_named_by_file_and_line(tmp_path, capsys, lines, message):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    assert batch_job.main(["--input", str(source), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: input:" in err and message in err
    assert not (tmp_path / "out").exists()


def test_non_utf8_input_and_a_file_as_output_are_refused(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id": "a", "prompt": "\xff"}\n')
    assert batch_job.main(["--input", str(source), "--output", str(tmp_path / "out")]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    source.write_text(json.dumps(GOOD) + "\n")
    (tmp_path / "taken").write_text("")
    assert batch_job.main(["--input", str(source), "--output", str(tmp_path / "taken")]) == 2
    assert "error: output:" in capsys.readouterr().err
