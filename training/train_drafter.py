"""`mirrorspec train-drafter`: prompts -> target answers -> target labels -> a trained drafter folder.

Every stage is resumable: answers and labels are appended to the data folder, training checkpoints to the output
folder; rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.training import data, magpie
from mirrorspec.training.prompt_bank import generate_prompts
from mirrorspec.training.trainer import TrainConfig, evaluate, train
from mirrorspec.workers.drafter_model import KINDS, Drafter, new_drafter

logger = logging.getLogger(__name__)

# Architectures: the token drafter is a 4-layer, 384-wide Llama; the feature drafter one target-width layer.
ARCHS = {
    "token": dict(layers=4, hidden=384, heads=6, kv_heads=2, intermediate=1024),
    "feature": dict(layers=1, hidden=None, heads=None, kv_heads=None, intermediate=None),  # from the target
}
STAGES = ("prompts", "answers", "labels", "train")
PROMPT_SOURCES = ("bank", "magpie")
SOURCE_FILE = "prompt_source.txt"  # in the data folder: which prompts its answers answer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="default", help="target model folder (or 'default')")
    p.add_argument("--out", required=True, help="output drafter folder")
    p.add_argument("--kind", choices=KINDS, required=True,
                   help="token: a small LM over the draft vocabulary; feature: also reads the target's hidden states")
    p.add_argument("--data", help="data folder (default: <cache>/drafter-data/<target name>)")
    p.add_argument("--prompts", type=int, default=4000, help="prompts the target answers")
    p.add_argument("--prompt-source", choices=PROMPT_SOURCES, default="bank",
                   help="bank: the templated prompts of training/prompts/; magpie: prompts the target writes itself "
                        "(sampled from its chat template's user turn; more varied). One source per --data folder")
    p.add_argument("--max-new-tokens", type=int, default=192, help="answer length cap")
    p.add_argument("--gen-batch", type=int, default=32, help="batch size of the target while answering")
    p.add_argument("--draft-vocab", type=int, default=8192, help="the drafter's vocabulary: the most frequent answer "
                                                                 "tokens")
    p.add_argument("--eval-fraction", type=float, default=0.03, help="share of the answers held out for evaluation")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--init", help="start from this trained drafter (its weights and vocabulary) instead of the "
                                   "target's: more training on more data")
    p.add_argument("--feature-layers", type=_layers, default=[],
                   help="feature drafters: also read the target's states after these layers, e.g. 2,15 (EAGLE-3's "
                        "fused low/middle/high features; the final state is always read). With --init of a drafter "
                        "that reads the final state only, a fuse layer is added that starts by picking it")
    p.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                   help="another data folder, already labelled for the same layers (e.g. answers to another prompt "
                        "source), that joins the training and held-out sets (repeatable)")
    p.add_argument("--stop-after", choices=STAGES[:-1], help="end after this stage (e.g. answer on one machine "
                                                           "now, label and train later from the same data folder)")
    for f in dataclasses.fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f.metadata["help"])


def _layers(text: str) -> list[int]:
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"feature_layers: a comma-separated list of layer numbers, got {text!r}")


def _initial_drafter(args: argparse.Namespace, target, responses: list[dict]) -> Drafter:
    from mirrorspec.orchestration.factory import eos_token_ids

    if args.feature_layers and args.kind != "feature":
        raise InvalidRequestError("feature_layers", "only feature drafters read the target's layers")
    if args.init:
        drafter = Drafter.load(args.init)  # float32, the trainer's weights
        if drafter.meta.kind != args.kind:
            raise InvalidRequestError("init", f"{args.init!r} is a {drafter.meta.kind} drafter, not a {args.kind} one")
        added = bool(args.feature_layers) and not drafter.meta.feature_layers
        if added:
            drafter.add_feature_layers(args.feature_layers)
        elif args.feature_layers and args.feature_layers != drafter.meta.feature_layers:
            raise InvalidRequestError("feature_layers", f"{args.init!r} reads layers {drafter.meta.feature_layers}")
        if (why := drafter.meta.mismatch(target.config)) is not None:
            raise InvalidRequestError("feature_layers" if added else "init", f"{args.init!r} {why}")
        return drafter
    vocab = data.draft_vocabulary(responses, args.draft_vocab, always=eos_token_ids(target))
    arch = dict(ARCHS[args.kind])
    if args.kind == "feature":
        tc = target.config
        arch.update(hidden=tc.hidden_size, heads=tc.num_attention_heads, kv_heads=tc.num_key_value_heads,
                    intermediate=tc.intermediate_size)
    drafter = new_drafter(args.kind, target.model, vocab, **arch, feature_layers=args.feature_layers)
    if (why := drafter.meta.mismatch(target.config)) is not None:
        raise InvalidRequestError("feature_layers", why)
    return drafter


def _prompts(args: argparse.Namespace, engine, data_dir: Path) -> list[dict]:
    """The prompts to answer, from the source the data folder was started with (answers are appended in order,
    so one folder must never mix sources; a folder from before sources were recorded holds bank answers)."""
    source_file = data_dir / SOURCE_FILE
    recorded = source_file.read_text().strip() if source_file.exists() else None
    if recorded is None and (data_dir / data.RESPONSES).exists():
        recorded = "bank"
    if recorded is not None and recorded != args.prompt_source:
        raise InvalidRequestError("prompt_source", f"{data_dir} holds answers to {recorded!r} prompts; use another "
                                                   f"--data folder for {args.prompt_source!r} ones")
    source_file.write_text(args.prompt_source + "\n")
    if args.prompt_source == "magpie":
        return magpie.write_prompts(engine, data_dir, args.prompts, batch=args.gen_batch)
    return generate_prompts(args.prompts)  # fixed data: the same prompt set whatever the seed


def _splits(data_dir: Path, extra_dirs: list[Path], layers: list[int], limit: int,
            eval_fraction: float) -> dict[str, tuple[list[data.Sequence], list[data.Sequence]]]:
    """Per data folder (the run's own first, at most `limit` examples): (train, held out). The held-out split is
    fixed, every k-th example of a folder, so a folder's held-out set is the same whatever joins it."""
    stride = round(1 / eval_fraction)
    splits = {}
    for d in [data_dir, *extra_dirs]:
        examples = data.load_shards(d, layers)[: limit if d == data_dir else None]
        if not examples:
            raise InvalidRequestError("data" if d == data_dir else "extra_data",
                                      f"{d} has no labels for layers {layers}: run the labels stage with --data {d}")
        splits[str(d)] = [e for i, e in enumerate(examples) if i % stride], examples[::stride]
    return splits


def cmd_train_drafter(args: argparse.Namespace) -> int:
    from mirrorspec.orchestration.engine import EngineConfig
    from mirrorspec.orchestration.factory import build_engine
    from mirrorspec.workers.default_model import cache_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 < args.eval_fraction < 0.5:
        raise InvalidRequestError("eval_fraction", "must be in (0, 0.5)")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    # The answers are training data, not served output, so the fast kernels write them: on 2 AVX-512-BF16 cores,
    # 297 tok/s at batch 128 against the exact path's 116 tok/s at batch 32 (SmolLM2-135M, 160-token answers).
    engine = build_engine(EngineConfig(target=args.target, drafter=None, max_batch=args.gen_batch, exact=False,
                                       step_cost="off"))
    target = engine.target.loaded
    data_dir = Path(args.data) if args.data else cache_dir() / "drafter-data" / target.path.name
    data_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    prompts = _prompts(args, engine, data_dir)
    if args.stop_after == "prompts":
        return 0
    data.generate_responses(engine, prompts, data_dir, max_new_tokens=args.max_new_tokens, batch=args.gen_batch)
    del engine  # its KV cache (gigabytes at a large --gen-batch); the target's weights stay with `target`
    if args.stop_after == "answers":
        return 0
    responses = data.read_responses(data_dir)[: args.prompts]
    extra_dirs = [Path(d) for d in args.extra_data]
    for d in extra_dirs:
        if not (d / data.RESPONSES).exists():
            raise InvalidRequestError("extra_data", f"{d} holds no answers ({data.RESPONSES})")
    torch.manual_seed(cfg.seed)
    # First: its layers decide what the labels keep; a new drafter's vocabulary counts every folder's answers.
    drafter = _initial_drafter(args, target, responses + [r for d in extra_dirs for r in data.read_responses(d)])
    layers = drafter.meta.feature_layers
    data.label_sequences(target.model, responses, data_dir, layers=layers)
    if args.stop_after == "labels":
        return 0
    splits = _splits(data_dir, extra_dirs, layers, args.prompts, args.eval_fraction)
    train_set = [e for part, _ in splits.values() for e in part]
    eval_set = [e for _, held_out in splits.values() for e in held_out]

    vocab = drafter.meta.draft_to_target
    final = train(drafter, train_set, eval_set, cfg, out)
    drafter.save(out)
    for name in TOKENIZER_FILES:  # the drafter speaks the target's tokenizer; ship it so the check can see that
        if (target.path / name).exists():
            shutil.copy(target.path / name, out / name)
    report = {
        "command": "mirrorspec train-drafter " + " ".join(sys.argv[2:]),
        "target": str(target.path),
        "kind": args.kind,
        "examples": {"train": len(train_set), "eval": len(eval_set)},
        "answer_tokens": sum(e.top_ids.shape[0] for e in train_set + eval_set),
        # Each folder's held-out set alone: a drafter trained on one folder is compared on the same examples.
        "eval_by_data": {d: evaluate(drafter, held_out, cfg) for d, (_, held_out) in splits.items()},
        "draft_vocab": len(vocab),
        "init": args.init,
        "parameters": sum(p.numel() for p in drafter.parameters()),
        "seconds": round(time.time() - started),
        "final": final,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["final"].get("eval", {}), indent=1))
    return 0
