"""`mirrorspec bench --variants float32:fast,bfloat16:exact,...`: the same methods on one engine per dtype and
exact setting, in one process and one run. Every engine is loaded first; then each method runs on every variant
in turn (with --interleave, each prompt goes through every method on every variant), and the targets' verify
cost curves are timed taking turns, so that a machine whose speed drifts (a shared VM) treats the variants
alike. Ratios: against the first variant's `ar`, and against transformers' float32 `generate` where a float32
variant ran `hf-generate`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mirrorspec.bench.harness import HF_GENERATE, BenchRun, cost_repeats, equal_column, take_turns, write_results
from mirrorspec.bench.verify_cost import verify_cost_curves
from mirrorspec.errors import InvalidRequestError
from mirrorspec.params import SpecParams
from mirrorspec.workers.models import parse_dtype

MODES = {"exact": True, "fast": False}


def parse_variants(text: str) -> list[tuple[str, str, bool]]:
    """`float32:fast,bfloat16:exact` -> [(label, dtype, exact), ...]."""
    variants = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        dtype, _, mode = item.partition(":")
        parse_dtype(dtype, "variants")
        if mode not in MODES:
            raise InvalidRequestError("variants", f"{item!r}: write DTYPE:exact or DTYPE:fast")
        variants.append((item, dtype, MODES[mode]))
    if not variants:
        raise InvalidRequestError("variants", "name at least one DTYPE:exact or DTYPE:fast")
    return variants


def run_variants(args: argparse.Namespace, engine_config, spec: SpecParams, cluster, stem: str) -> int:
    if cluster.ray != "never" or cluster.drafter_address:
        raise InvalidRequestError("variants", "variants are benched in one process: use --ray never")
    runs = {label: BenchRun(args, dataclasses.replace(engine_config, dtype=dtype, exact=exact), spec, cluster)
            for label, dtype, exact in parse_variants(args.variants)}
    methods = next(iter(runs.values())).methods
    if args.interleave:  # each prompt through every method on every variant
        take_turns([(run, method) for method in methods for run in runs.values()])
    else:  # each method on every variant in turn
        for method in methods:
            for run in runs.values():
                run.run(method)
    curves = verify_cost_curves({label: run.engine.target for label, run in runs.items()}, **cost_repeats(args))
    results = {"variants": {label: {**run.results(), "verify_cost": curves[label]} for label, run in runs.items()}}
    results["summary"] = variant_summary(results["variants"])
    write_results(results, args.out, stem, plot_variants)
    print_variant_table(results)
    return 0


def variant_summary(runs: dict[str, dict]) -> list[dict]:
    """Per variant and method: tok/s, as ratios against the first variant's `ar` and against transformers'
    float32 `generate` (where a float32 variant ran hf-generate), and the outputs equal to that variant's `ar`."""
    first = next(iter(runs.values()))["methods"]["ar"]["overall"]["tokens_per_s"]
    hf_fp32 = next((run["methods"][HF_GENERATE]["overall"]["tokens_per_s"] for run in runs.values()
                    if run["dtype"] == "float32" and HF_GENERATE in run["methods"]), None)
    rows = []
    for variant, run in runs.items():
        for method, summary in run["methods"].items():
            overall = summary["overall"]
            rows.append({"variant": variant, "method": method, "tokens_per_s": overall["tokens_per_s"],
                         "tau": overall["tau"], "equal_to_ar": overall.get("equal_to_ar"),
                         "prompts": overall["prompts"],
                         "vs_first_ar": round(overall["tokens_per_s"] / first, 3),
                         "vs_hf_generate_fp32": round(overall["tokens_per_s"] / hf_fp32, 3) if hf_fp32 else None})
    return rows


def plot_variants(results: dict, path: Path) -> None:
    """tok/s of every method per variant (bars), and each variant's verify cost curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["variants"]
    methods = list(dict.fromkeys(m for run in runs.values() for m in run["methods"]))
    fig, axes = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        speed = [run["methods"].get(method, {}).get("overall", {}).get("tokens_per_s") or 0 for run in runs.values()]
        axes[0].bar([i + k * width for i in range(len(runs))], speed, width, label=method)
    axes[0].set_xticks([i + 0.4 - width / 2 for i in range(len(runs))], list(runs))
    axes[0].set_ylabel("tokens/s")
    first = next(iter(runs.values()))
    threads = first["threads"]
    axes[0].set_title(f"{Path(str(first['target'])).name} | {first['prompts']} prompts | {threads} "
                      f"thread{'' if threads == 1 else 's'}", fontsize=10)
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(5, len(methods)), fontsize=8,
                   frameon=False)
    for variant, run in runs.items():
        curve = run["verify_cost"]["ms"]
        axes[1].plot([int(k) for k in curve], list(curve.values()), marker="o", label=variant)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("new tokens in one target forward")
    axes[1].set_ylabel("ms per forward")
    axes[1].set_title(f"verify cost at a {first['verify_cost']['context']}-token context")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_variant_table(results: dict) -> None:
    print(f"{'variant':<16} {'method':<16} {'tok/s':>8} {'vs 1st ar':>9} {'vs hf fp32':>10} {'tau':>6} {'=ar':>6}")
    for row in results["summary"]:
        hf = "-" if row["vs_hf_generate_fp32"] is None else f"{row['vs_hf_generate_fp32']:.2f}x"
        print(f"{row['variant']:<16} {row['method']:<16} {row['tokens_per_s']:>8.2f} {row['vs_first_ar']:>8.2f}x "
              f"{hf:>10} {row['tau'] or 0:>6.2f} {equal_column(row):>6}")
