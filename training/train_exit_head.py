"""`mirrorspec train-exit-head`: fit the early-exit head (workers/exit_head.py) on the target's own answers.

Reads the answers `train-drafter` wrote (responses.jsonl in the drafter data folder), runs the target over them
once, keeps the hidden states of layer l_e and of the final layer at every answer position, fits the affine map
in closed form on most examples and reports, on the held-out rest, how often the final argmax token is in the
early exit's top-kappa (Mirror-SD's coverage, App. E) for the plain logit lens and for the head.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mirrorspec.training.data import padded_batch
from mirrorspec.workers.exit_head import ExitHead, ExitHeadMeta, fit


def add_exit_head_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="default", help="target model folder (or 'default')")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layer", type=int, help="exit layer l_e (default: half the target's layers)")
    p.add_argument("--data", help="drafter data folder with responses.jsonl (default: train-drafter's)")
    p.add_argument("--examples", type=int, default=600, help="answers used (every 10th is held out)")
    p.add_argument("--kappa", type=int, nargs="+", default=[1, 4, 8], help="top-kappa sizes to report")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")


@torch.inference_mode()
def collect(model, rows: list[dict], layer: int, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer-l_e hidden states, final normed hidden states) at every answer position of `rows`."""
    decoder = model.base_model
    middles, finals = [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        seqs, ids, mask = padded_batch(chunk)
        out = decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        for i, (r, s) in enumerate(zip(chunk, seqs)):
            span = slice(len(r["prompt_ids"]) - 1, len(s) - 1)  # positions that predict answer tokens
            middles.append(out.hidden_states[layer][i, span].float())
            finals.append(out.last_hidden_state[i, span].float())
    return torch.cat(middles), torch.cat(finals)


@torch.inference_mode()
def coverage(model, head: ExitHead | None, middle: torch.Tensor, final: torch.Tensor, kappas: list[int]) -> dict:
    """Share of positions whose final argmax is in the early exit's top-kappa."""
    lm_head = model.get_output_embeddings()
    target = lm_head(final).argmax(-1)
    estimate = head(middle) if head is not None else model.base_model.norm(middle)
    top = lm_head(estimate).topk(max(kappas), dim=-1).indices
    return {f"top{k}": round(float((top[:, :k] == target[:, None]).any(-1).float().mean()), 4) for k in kappas}


def cmd_train_exit_head(args: argparse.Namespace) -> int:
    from mirrorspec.training.data import read_responses
    from mirrorspec.workers.default_model import cache_dir
    from mirrorspec.workers.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    target = load_model(args.target, field="target", cpu_linear="off")
    layers = target.config.num_hidden_layers
    layer = args.layer or layers // 2
    if not 1 <= layer < layers:
        from mirrorspec.errors import InvalidRequestError

        raise InvalidRequestError("layer", f"must be in [1, {layers - 1}], got {layer}")
    data_dir = Path(args.data) if args.data else cache_dir() / "drafter-data" / target.path.name
    rows = read_responses(data_dir)[: args.examples]
    held_out = rows[::10]
    train_rows = [r for i, r in enumerate(rows) if i % 10]
    middle, final = collect(target.model, train_rows, layer)
    weight, bias = fit(middle, final)
    head = ExitHead(ExitHeadMeta(layer, target.config.hidden_size), weight, bias)
    eval_middle, eval_final = collect(target.model, held_out, layer)
    report = {
        "command": "mirrorspec train-exit-head " + " ".join(sys.argv[2:]),
        "target": str(target.path),
        "layer": layer,
        "train_positions": middle.shape[0],
        "held_out_positions": eval_middle.shape[0],
        "coverage_logit_lens": coverage(target.model, None, eval_middle, eval_final, args.kappa),
        "coverage_exit_head": coverage(target.model, head, eval_middle, eval_final, args.kappa),
        "seconds": round(time.time() - started),
    }
    head.meta.report = report
    head.save(args.out)
    print(json.dumps(report, indent=1))
    return 0
