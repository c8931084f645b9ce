"""`mirrorspec write-ngram-corpus`: a corpus file for `engine.ngram_corpus` from the target's own answers.

The answers `train-drafter` keeps in its data folders (responses.jsonl, token ids) are decoded to text, one
{"text": ...} JSONL row per answer, gzipped; the engine tokenizes them again when it loads the file. Text, not ids,
so that the file is readable and any corpus a user writes has the same form.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from mirrorspec.errors import InvalidRequestError
from mirrorspec.training import data


def add_corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="a train-drafter data folder whose answers (responses.jsonl) join the corpus (repeatable)")
    p.add_argument("--out", required=True, help="output file (.jsonl.gz)")
    p.add_argument("--target", default="default", help="the target whose tokenizer decodes the answers")


def cmd_write_corpus(args: argparse.Namespace) -> int:
    from mirrorspec.workers.models import load_tokenizer, resolve_model_dir

    tokenizer = load_tokenizer(resolve_model_dir(args.target, field="target"))
    rows = 0
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        for folder in map(Path, args.data):
            if not (folder / data.RESPONSES).exists():
                raise InvalidRequestError("data", f"{folder} holds no answers ({data.RESPONSES})")
            for response in data.read_responses(folder):
                text = tokenizer.decode(response["answer_ids"], skip_special_tokens=True).strip()
                if text:
                    f.write(json.dumps({"text": text}) + "\n")
                    rows += 1
    tmp.rename(out)
    print(f"{out}: {rows} answers")
    return 0
