"""`mirrorspec bench-diffusion`: the speed-quality table of diffusion decoding strategies on the synthetic tasks.

Per setting: forwards per answer token, answer tokens/s and exact-match accuracy per task, on held-out examples
the dLLM never trained on; the reference is LLaDA's one token per step. One run, one process, the same examples
for every setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.params import DiffusionParams

DEFAULT_SETTINGS = ("low-confidence,low-confidence:steps=8,threshold:threshold=0.9,threshold:threshold=0.7,"
                    "threshold:threshold=0.5,factor:factor=1,threshold:threshold=0.9+early_commit=1")


def add_bench_diffusion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="drafters/smollm2-tasks-dllm", help="a masked-diffusion model folder")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help="comma list of strategy[:key=value+key=value] (keys of DiffusionParams); the first "
                        "is the reference")
    p.add_argument("--examples", type=int, default=200, help="held-out examples (spread over the tasks)")
    p.add_argument("--gen-length", type=int, default=16, help="answer canvas (train-dllm's --gen-length)")
    p.add_argument("--block-length", type=int, help="default: the whole canvas (the tasks' answers are short)")
    p.add_argument("--batch-size", type=int, default=1, help="examples decoded together")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", default="bench/results", help="folder for JSON and PNG")
    p.add_argument("--name", help="results file stem (default: diffusion-<timestamp>)")


def parse_setting(label: str, base: DiffusionParams) -> DiffusionParams:
    strategy, _, rest = label.partition(":")
    settable = {f.name for f in dataclasses.fields(DiffusionParams)} - {"strategy", "gen_length"}
    overrides: dict = {}
    for item in filter(None, rest.split("+")):
        key, _, value = item.partition("=")
        if key not in settable:
            raise InvalidRequestError("settings", f"unknown key {key!r} in {label!r}")
        overrides[key] = _typed(key, value)
    return dataclasses.replace(base, strategy=strategy, **overrides).validate()


def _typed(key: str, value: str):
    current = getattr(DiffusionParams(), key)
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(current, str):
        return value
    if key == "steps" or isinstance(current, int):
        return int(value)
    return float(value)


def cmd_bench_diffusion(args: argparse.Namespace) -> int:
    from mirrorspec.bench.harness import write_results
    from mirrorspec.training.dllm import HELD_OUT_SEED, TaskCodec, evaluate
    from mirrorspec.training.synthetic_tasks import examples
    from mirrorspec.workers.diffusion_model import load_dllm

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_dllm(args.target)
    gen_length = args.gen_length
    codec = TaskCodec(model.tokenizer, gen_length)
    held_out = examples(args.examples, HELD_OUT_SEED)
    base = DiffusionParams(gen_length=gen_length, block_length=args.block_length or gen_length)
    labels = [s.strip() for s in args.settings.split(",") if s.strip()]
    settings = {label: parse_setting(label, base) for label in labels}
    results = {"target": args.target, "examples": len(held_out), "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "gen_length": gen_length, "settings": {}}
    for label, params in settings.items():
        started = time.perf_counter()
        scores = evaluate(model, codec, held_out, params, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        results["settings"][label] = {"params": dataclasses.asdict(params), **scores,
                                      "tokens_per_s": round(scores["tokens"] / seconds, 2),
                                      "seconds": round(seconds, 2)}
    reference = results["settings"][labels[0]]
    for summary in results["settings"].values():
        summary["forward_reduction_vs_reference"] = round(reference["forwards_per_token"] / summary["forwards_per_token"], 2)
        summary["accuracy_change_points"] = round(100 * (summary["accuracy"]["overall"] - reference["accuracy"]["overall"]), 1)
    _cache_agreement(results["settings"])
    for summary in results["settings"].values():
        del summary["outputs"]
    write_results(results, args.out, args.name or time.strftime("diffusion-%Y%m%d-%H%M%S"), plot)
    _print_table(results)
    return 0


def _cache_agreement(settings: dict) -> None:
    """For each cached setting whose uncached twin (the same parameters, cache none) ran too: the share of
    answers decoded identically, and of answer tokens equal at the same position."""
    uncached = {_without_cache(s["params"]): s for s in settings.values() if s["params"]["cache"] == "none"}
    for s in settings.values():
        twin = uncached.get(_without_cache(s["params"]))
        if s["params"]["cache"] == "none" or twin is None:
            continue
        pairs = list(zip(s["outputs"], twin["outputs"]))
        same_tokens = sum(sum(x == y for x, y in zip(a, b)) for a, b in pairs)
        s["agreement_with_uncached"] = {
            "answers": round(sum(a == b for a, b in pairs) / len(pairs), 4),
            "tokens": round(same_tokens / max(1, sum(max(len(a), len(b)) for a, b in pairs)), 4)}


def _without_cache(params: dict) -> str:
    return repr(sorted((k, v) for k, v in params.items() if k != "cache"))


def plot(results: dict, path: Path) -> None:
    """Accuracy against forwards per token (what parallel commits save) and against tokens/s (what a cache saves:
    the same forwards, each cheaper)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for axis, key, label in ((axes[0], "forwards_per_token", "forwards per answer token (lower: fewer forwards)"),
                             (axes[1], "tokens_per_s", "answer tokens/s (higher is faster)")):
        for name, s in results["settings"].items():
            axis.scatter(s[key], 100 * s["accuracy"]["overall"])
            axis.annotate(name, (s[key], 100 * s["accuracy"]["overall"]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
        axis.set_xlabel(label)
        axis.set_ylabel("exact-match accuracy, %")
    fig.suptitle(f"{len(results['settings'])} diffusion decoding settings, {Path(str(results['target'])).name}, "
                 f"{results['examples']} held-out synthetic-task examples", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_table(results: dict) -> None:
    print(f"{'setting':52} {'fwd/tok':>8} {'tok/s':>8} {'acc':>6} {'d acc':>6} {'agree':>6}")
    for label, s in results["settings"].items():
        agree = s.get("agreement_with_uncached", {}).get("answers")
        print(f"{label:52} {s['forwards_per_token']:8.3f} {s['tokens_per_s']:8.1f} "
              f"{100 * s['accuracy']['overall']:6.1f} {s['accuracy_change_points']:6.1f} "
              f"{'' if agree is None else f'{100 * agree:.1f}':>6}")
