"""Prompts written by the target itself, Magpie-style (Xu et al., arXiv 2406.08464).

An aligned chat model given only its template's text up to where a user message begins writes a user message:
sampling that gives prompts as varied as what the model learned users ask, with no template bank. The drafter is
then trained on the target's answers to them (the bench showed that the templated bank is too narrow: held-out
gains stopped reaching the bench prompts). Prompts are appended to a file in the data folder as they come, so a
rerun resumes; each draw has its own seed (its index), so the file is the same whatever the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

PROMPTS_FILE = "magpie-prompts.jsonl"
CATEGORY = "magpie"
_SENTINEL = "\x00mirrorspec-user-message\x00"


def query_prefix(tokenizer) -> str:
    """The chat template's text before a user message's content (its default system turn included)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False)
    if _SENTINEL not in rendered:
        raise ValueError("the chat template does not show the user message verbatim; no query prefix to sample from")
    return rendered.split(_SENTINEL)[0]


def usable(text: str, finish_reason: str | None) -> bool:
    """A whole user message (ended by the model, not by the length cap or an error) of a few words."""
    return finish_reason == "eos" and len(text.split()) >= 3


def write_prompts(engine, out_dir: Path, count: int, *, batch: int, max_tokens: int = 96,
                  temperature: float = 1.0, top_p: float = 0.95) -> list[dict]:
    """Sample until `out_dir/magpie-prompts.jsonl` holds `count` distinct usable prompts; return the first `count`
    as {"category", "prompt"} rows (the shape of training/prompt_bank.py's)."""
    from mirrorspec.params import SamplingParams, SpecParams

    path = out_dir / PROMPTS_FILE
    rows = [json.loads(line) for line in path.open()] if path.exists() else []
    seen = {r["prompt"] for r in rows}
    draws = rows[-1]["draw"] + 1 if rows else 0  # the next draw's seed
    prefix = query_prefix(engine.tokenizer)
    with path.open("a") as f, tqdm(total=count, initial=min(len(rows), count), desc="target prompts",
                                   unit="prompt") as bar:
        while len(rows) < count:
            seeds = range(draws, draws + 8 * batch)
            sampling = [SamplingParams(temperature=temperature, top_p=top_p, seed=s, max_new_tokens=max_tokens)
                        for s in seeds]
            outs = engine.generate([prefix] * len(sampling), sampling, SpecParams(method="ar"), chat=False)
            for seed, out in zip(seeds, outs):
                text = out.text.strip()
                if usable(text, out.finish_reason) and text not in seen and len(rows) < count:
                    seen.add(text)
                    rows.append({"category": CATEGORY, "prompt": text, "draw": seed})
                    f.write(json.dumps(rows[-1]) + "\n")
                    bar.update(1)
            f.flush()
            draws += len(sampling)
    return [{"category": r["category"], "prompt": r["prompt"]} for r in rows[:count]]
