"""`mirrorspec bench`: methods side by side on the same prompts, model pair, cores and run.

Protocol (after Spec-Bench, arXiv 2401.07851): greedy, chat template, one prompt at a time (or --batch-size N),
one warm-up generation per method, wall time around each generation. Per method and category: tokens/s
(sum of tokens / sum of seconds), tau (tokens per target forward, bonus included), acceptance rate, speedup over
`ar`, and whether the output equals `ar`'s token for token (Spec-Bench's lossless check). `hf-generate` is
transformers' plain greedy `generate` on a fresh, unmodified copy of the target (what a user has at hand);
`hf-assisted` is its assisted generation (`generate(..., assistant_model=...)`) with the same pair; their tau
counts target forwards with a hook. `diffusion-draft` runs with its own drafter (--diffusion-drafter) on the same
target, in-process. A method can carry draft-shape options, e.g. `chain:gamma=3` or
`tree:tree_depth=4+tree_topk=2+adaptive=off`. The drafter's and the target's forward cost per token are timed on
one thread.
`--variants float32:fast,bfloat16:exact,...` runs it all once per dtype and exact setting, in one process and
one run, and adds each target's verify cost curve (bench/verify_cost.py). Writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.methods import AR_DRAFTER, DIFFUSION_DRAFTER, ENGINE_METHODS, METHODS
from mirrorspec.orchestration.drafter_session import DrafterSession
from mirrorspec.orchestration.step_cost import StepCost
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers import exact_attention

HF_ASSISTED = "hf-assisted"
HF_GENERATE = "hf-generate"
HF_METHODS = (HF_GENERATE, HF_ASSISTED)
BENCH_METHODS = (*ENGINE_METHODS, *HF_METHODS)
DEFAULT_PROMPTS = "spec_bench_mini.jsonl"


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default="ar,chain,tree,hf-assisted",
                   help=f"comma list of {', '.join(BENCH_METHODS)}, each optionally ':key=value+key=value'")
    p.add_argument("--hf-assistant", help="assistant model folder for hf-assisted (default: the engine's drafter)")
    p.add_argument("--hf-dtype", help="dtype of hf-generate and hf-assisted (default: the engine's), e.g. float32 "
                                      "for transformers' float32 baseline beside a bfloat16 engine")
    p.add_argument("--diffusion-drafter", default="default",
                   help="the block-diffusion drafter of diffusion-draft (default: the shipped one); the other "
                        "methods keep --drafter")
    p.add_argument("--prompts", help="JSONL with id, category, prompt (default: the project's Spec-Bench-style set)")
    p.add_argument("--per-category", type=int, default=0, help="use only the first N prompts of each category")
    p.add_argument("--categories", help="comma list: use only the prompts of these categories (e.g. "
                                        "extraction,summarization,coding)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt")
    p.add_argument("--temperature", type=_temperature, default=0.0,
                   help="0: greedy (every method's tokens compared with ar's); above: sampled, each prompt with a "
                        "seed from its id (methods agree with ar in law, not token for token: no '= ar' column)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts submitted together (continuous batching)")
    p.add_argument("--out", default="bench/results", help="folder for JSON and PNG")
    p.add_argument("--name", help="results file stem (default: bench-<timestamp>)")
    p.add_argument("--interleave", action="store_true",
                   help="run the methods in turn on each prompt (each batch), not one method over all prompts after "
                        "another: on a machine whose speed drifts (a shared VM) the ratios then compare like with like")
    p.add_argument("--variants", help="comma list of DTYPE:exact or DTYPE:fast (e.g. float32:fast,bfloat16:exact): "
                                      "every method once per variant, in this run, with each target's verify cost")
    p.add_argument("--cost-repeats", type=_positive,
                   help="timed forwards per point of the cost measurements (default: 20 for the one-thread decode "
                        "cost, 5 per point of each --variants target's verify cost curve); 1 for a quick smoke run")


def _temperature(text: str) -> float:
    try:
        return SamplingParams(temperature=float(text)).validate().temperature
    except (ValueError, InvalidRequestError) as exc:
        raise argparse.ArgumentTypeError(f"temperature: {exc}") from None


def prompt_seed(prompt_id: str) -> int:
    """A sampled bench's seed for one prompt: the same for every method and run."""
    return zlib.crc32(prompt_id.encode())


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cost_repeats(args: argparse.Namespace) -> dict:
    """The cost measurements' repeats as --cost-repeats sets them (none: each measurement's own default)."""
    return {} if args.cost_repeats is None else {"repeats": args.cost_repeats}


def load_prompts(path: str | None, per_category: int = 0, categories: str | None = None) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8") if path else (
        resources.files("mirrorspec.bench").joinpath("prompts", DEFAULT_PROMPTS).read_text(encoding="utf-8")
    )
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if categories:
        wanted = [c.strip() for c in categories.split(",") if c.strip()]
        if unknown := sorted(set(wanted) - {row["category"] for row in rows}):
            raise InvalidRequestError("categories", f"no prompts of {unknown}")
        rows = [row for row in rows if row["category"] in wanted]
    if per_category:
        seen: dict[str, int] = defaultdict(int)
        kept = []
        for row in rows:
            if seen[row["category"]] < per_category:
                seen[row["category"]] += 1
                kept.append(row)
        rows = kept
    return rows


@dataclasses.dataclass
class Record:
    id: str
    category: str
    tokens: list[int]
    seconds: float
    target_forwards: int
    drafted: int = 0
    accepted: int = 0
    drafts: int = 0
    accepted_per_position: list[int] = dataclasses.field(default_factory=list)
    reused: int = 0  # mirror: windows taken from precomputed branches
    exit_checked: int = 0
    exit_covered: int = 0
    predicted_accepted: float = 0.0  # the adaptive budget's estimate of `accepted`
    unverified: int = 0  # drafted nodes the adaptive budget left out


def parse_method(label: str, spec: SpecParams) -> tuple[str, SpecParams]:
    """`tree:tree_depth=4+tree_topk=2` -> ("tree", spec with those fields)."""
    name, _, options = label.partition(":")
    if name not in BENCH_METHODS:
        raise InvalidRequestError("methods", f"unknown method {name!r}; choose from {', '.join(BENCH_METHODS)}")
    fields = {f.name: f.type for f in dataclasses.fields(SpecParams) if f.name != "method"}
    switches = {name for name, kind in fields.items() if "bool" in str(kind)}  # by type: unset (None) ones too
    values: dict[str, int | bool] = {}
    for option in filter(None, options.split("+")):
        key, _, value = option.partition("=")
        if key in switches and value in ("on", "off"):
            values[key] = value == "on"
        elif key in fields.keys() - switches and value.isdigit():
            values[key] = int(value)
        else:
            raise InvalidRequestError("methods", f"bad option {option!r} in {label!r}; use "
                                                 f"{sorted(fields.keys() - switches)}=N or {sorted(switches)}=on|off")
    return name, dataclasses.replace(spec, method=name if name in ENGINE_METHODS else spec.method, **values)


class EngineMethod:
    """One engine method, a chunk of prompts (one batch) per call."""

    def __init__(self, engine, spec: SpecParams, max_new: int, temperature: float) -> None:
        self.engine, self.spec, self.max_new, self.temperature = engine, spec, max_new, temperature

    def sampling(self, row: dict) -> SamplingParams:
        seed = prompt_seed(row["id"]) if self.temperature else None
        return SamplingParams(max_new_tokens=self.max_new, temperature=self.temperature, seed=seed)

    def warm_up(self, prompt: dict) -> None:
        self.engine.generate([prompt["prompt"]], self.sampling(prompt), self.spec, chat=True)

    def __call__(self, chunk: list[dict]) -> list[Record]:
        t0 = time.perf_counter()
        outs = self.engine.generate([r["prompt"] for r in chunk], [self.sampling(r) for r in chunk], self.spec,
                                    chat=True)
        seconds = time.perf_counter() - t0
        records = []
        for row, out in zip(chunk, outs):
            if out.error:
                raise RuntimeError(f"{row['id']}: {out.error}")
            # Per-prompt time of a batch is the batch's wall time shared by its prompts.
            st = out.stats
            records.append(Record(row["id"], row["category"], out.token_ids, seconds / len(chunk),
                                  st.target_forwards, st.drafted, st.accepted, st.drafts,
                                  list(st.accepted_per_position), st.reused_windows, st.exit_checked,
                                  st.exit_covered, st.predicted_accepted, st.unverified))
        return records


class HfMethod:
    """`target.generate` (transformers), greedy or sampled at `temperature` (torch seeded per prompt as the
    engine's requests are), assisted by `assistant` unless it is None, one prompt at a time with `threads` torch
    threads."""

    def __init__(self, target, assistant, tokenizer, max_new: int, eos_ids: list[int], threads: int,
                 temperature: float) -> None:
        self.target, self.assistant, self.tokenizer = target, assistant, tokenizer
        self.max_new, self.eos_ids, self.threads, self.temperature = max_new, eos_ids, threads, temperature
        self.decoding = ({"do_sample": True, "temperature": temperature, "top_k": None} if temperature
                         else {"do_sample": False})

    def warm_up(self, prompt: dict) -> None:
        self([prompt])

    def __call__(self, chunk: list[dict]) -> list[Record]:
        from transformers.utils import logging as hf_logging

        calls = {"n": 0}

        def count(*_):
            calls["n"] += 1

        hook = self.target.register_forward_pre_hook(count)
        verbosity, threads = hf_logging.get_verbosity(), torch.get_num_threads()
        if not logging.getLogger("mirrorspec").isEnabledFor(logging.INFO):
            # Assisted generation calls the assistant in a way its own deprecation notice objects to, once per
            # prompt; --verbose keeps it.
            hf_logging.set_verbosity_error()
        torch.set_num_threads(self.threads)
        records = []
        try:
            for row in chunk:
                ids = self.tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                                         add_generation_prompt=True, return_tensors="pt",
                                                         return_dict=True)
                calls["n"] = 0
                if self.temperature:
                    torch.manual_seed(prompt_seed(row["id"]))
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = self.target.generate(**ids, assistant_model=self.assistant, **self.decoding,
                                               max_new_tokens=self.max_new, eos_token_id=self.eos_ids,
                                               pad_token_id=self.tokenizer.pad_token_id)
                seconds = time.perf_counter() - t0
                new = out[0, ids["input_ids"].shape[1]:].tolist()
                records.append(Record(row["id"], row["category"], new, seconds, calls["n"]))
        finally:
            hook.remove()
            hf_logging.set_verbosity(verbosity)
            torch.set_num_threads(threads)
        return records


def summarize(records: list[Record], reference: list[Record] | None) -> dict:
    def block(rs: list[Record], refs: list[Record] | None) -> dict:
        tokens = sum(len(r.tokens) for r in rs)
        seconds = sum(r.seconds for r in rs)
        forwards = sum(r.target_forwards for r in rs)
        drafted = sum(r.drafted for r in rs)
        drafts = sum(r.drafts for r in rs)
        depth = max((len(r.accepted_per_position) for r in rs), default=0)
        per_position = [sum(r.accepted_per_position[k] for r in rs if len(r.accepted_per_position) > k)
                        for k in range(depth)]
        out = {
            "prompts": len(rs),
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 3) if seconds else None,
            "tau": round(tokens / forwards, 3) if forwards else None,
            "acceptance_rate": round(sum(r.accepted for r in rs) / drafted, 4) if drafted else None,
            # vLLM's mean acceptance length: 1 + accepted draft tokens per drafting step (the same for a tree: its
            # accepted path), and per-position acceptance over drafting steps
            "acceptance_length": round(1 + sum(r.accepted for r in rs) / drafts, 3) if drafts else None,
            "acceptance_by_position": [round(n / drafts, 4) for n in per_position] if drafts else None,
            "accepted": sum(r.accepted for r in rs),
            "predicted_accepted": round(sum(r.predicted_accepted for r in rs), 2),
            "unverified": sum(r.unverified for r in rs),
        }
        if refs is not None:
            out["equal_to_ar"] = sum(a.tokens == b.tokens for a, b in zip(rs, refs))
        return out

    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_cat[r.category].append(i)
    pick = lambda rs, idx: None if rs is None else [rs[i] for i in idx]  # noqa: E731
    return {
        "overall": block(records, reference),
        "categories": {c: block(pick(records, idx), pick(reference, idx)) for c, idx in by_cat.items()},
    }


def setup_title(results: dict) -> str:
    """What ran, without local paths: model folder names, dtype, threads, batch."""
    threads = results["threads"]
    diffusion = results.get("diffusion_drafter")
    parts = [f"target {Path(str(results['target'])).name}", f"drafter {Path(str(results['drafter'])).name}",
             f"diffusion-draft drafter {Path(str(diffusion)).name}" if diffusion else "",
             str(results.get("dtype") or ""), f"{threads} thread{'' if threads == 1 else 's'}",
             f"batch {results.get('batch_size', 1)}",
             f"{results['prompts']} prompts x {results['max_new_tokens']} tokens"]
    return " | ".join(p for p in parts if p)


def plot(results: dict, path: Path) -> None:
    """Tokens/s per category (legend below the bars), and per method tau and the speedup over ar with one dot per
    category, so that a mean over few prompts shows its spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(results["methods"])
    cats = list(next(iter(results["methods"].values()))["categories"])
    fig, axes = plt.subplots(1, 2, figsize=(16, 6), gridspec_kw={"width_ratios": [3, 1.3]})
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        speed = [results["methods"][m]["categories"][c]["tokens_per_s"] or 0 for c in cats]
        axes[0].bar([i + k * width for i in range(len(cats))], speed, width, label=f"{k + 1}  {m}")
    axes[0].set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, rotation=35, ha="right", fontsize=8)
    axes[0].set_ylabel("tokens/s")
    axes[0].set_title("tokens/s by prompt category", fontsize=10)
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(3, len(methods)), fontsize=8,
                   frameon=False)
    overall = [results["methods"][m]["overall"] for m in methods]
    axes[1].bar([i - 0.2 for i in range(len(methods))], [o["tau"] or 0 for o in overall], 0.4,
                label="tau (tokens per target forward)")
    axes[1].bar([i + 0.2 for i in range(len(methods))], [o.get("speedup_vs_ar") or 0 for o in overall], 0.4,
                label="speedup over ar (dots: per category)")
    for i, m in enumerate(methods):
        per_cat = [b.get("speedup_vs_ar") for b in results["methods"][m]["categories"].values()]
        axes[1].scatter([i + 0.2] * len(per_cat), per_cat, s=9, color="black", zorder=3)
    axes[1].set_xticks(range(len(methods)), [str(k + 1) for k in range(len(methods))])  # the legend's numbers
    axes[1].set_xlabel("method (numbered as in the legend)")
    axes[1].axhline(1.0, color="gray", lw=0.8)
    axes[1].legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)
    fig.suptitle(setup_title(results), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace, engine_config, spec: SpecParams, cluster) -> int:
    stem = args.name or time.strftime("bench-%Y%m%d-%H%M%S")
    if args.variants:
        from mirrorspec.bench.variants import run_variants

        return run_variants(args, engine_config, spec, cluster, stem)
    run = BenchRun(args, engine_config, spec, cluster)

    def keep() -> None:  # what ran so far: a later failure keeps it
        write_results(run.results(), args.out, stem)

    try:
        if args.interleave:
            run.run_interleaved(run.methods, after_round=keep)
        else:
            for label in run.methods:
                run.run(label)
                keep()
    finally:
        run.close()
    results = run.results()
    write_results(results, args.out, stem, plot)
    _print_table(results)
    return 0


class BenchRun:
    """One engine (and, for diffusion-draft, a twin sharing its target) with the bench's prompts and methods;
    `run` benches one method, `results` summarises those run so far."""

    def __init__(self, args: argparse.Namespace, engine_config, spec: SpecParams, cluster) -> None:
        from mirrorspec.bench.hf_assistant import check_assistant
        from mirrorspec.cluster.launch import open_engine
        from mirrorspec.orchestration.engine import Engine
        from mirrorspec.orchestration.factory import build_drafter, resolve_drafter
        from mirrorspec.workers.models import parse_dtype

        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        self.parsed = {label: parse_method(label, spec) for label in methods}
        if "ar" not in methods:
            methods.insert(0, "ar")  # the reference for speedup and equality
            self.parsed["ar"] = ("ar", dataclasses.replace(spec, method="ar"))
        self.methods = methods
        if any(name in HF_METHODS for name, _ in self.parsed.values()) and args.batch_size != 1:
            raise InvalidRequestError("batch_size", "hf-generate and hf-assisted run one prompt at a time here")
        drafters = {METHODS[name].drafter for name, _ in self.parsed.values() if name in METHODS}
        if AR_DRAFTER in drafters and not engine_config.drafter:
            raise InvalidRequestError("drafter", "chain, tree and mirror need a drafter (--drafter DIR or self)")
        if args.hf_dtype:
            parse_dtype(args.hf_dtype, "hf_dtype")
        if any(name == HF_ASSISTED for name, _ in self.parsed.values()):
            check_assistant(_assistant_folder(engine_config, args.hf_assistant))
        self.args, self.spec, self.cluster = args, spec, cluster
        self.prompts = load_prompts(args.prompts, args.per_category, args.categories)
        engine_config = dataclasses.replace(engine_config, max_batch=max(engine_config.max_batch, args.batch_size))
        on_ray = any(cluster.uses_ray(name) for name, _ in self.parsed.values())
        # One engine for every method: on Ray (or dialing a served drafter) `ar` runs on the target's role, and
        # chain/tree/mirror across both roles, so that all share one placement.
        self.engine = open_engine(engine_config, spec, cluster, on_ray=on_ray)
        self.two_roles = on_ray or bool(cluster.drafter_address)
        self.diffusion_engine, self.diffusion_drafter = None, None
        if DIFFUSION_DRAFTER in drafters:
            if self.two_roles:
                raise InvalidRequestError("methods", "diffusion-draft is benched in-process: use --ray never")
            self.diffusion_drafter = resolve_drafter(dataclasses.replace(engine_config, drafter=args.diffusion_drafter),
                                                     "diffusion-draft")
            # The same target worker, another drafter: methods run one after the other, so they share its KV cache.
            engine = self.engine
            self.diffusion_engine = Engine(
                engine.target, build_drafter(dataclasses.replace(engine_config, drafter=self.diffusion_drafter),
                                             engine.target.loaded),
                tokenizer=engine.tokenizer, eos_ids=engine.eos_ids, max_model_len=engine.max_model_len,
                max_batch=engine_config.max_batch, max_spec_nodes=engine.max_spec_nodes, seed=engine_config.seed)
        # After the engine has loaded (and so checked) the target: the drafter's folder, for hf-assisted and results.
        self.engine_config = dataclasses.replace(engine_config, drafter=resolve_drafter(engine_config))
        self.records: dict[str, list[Record]] = {}
        self.channel: dict[str, dict] = {}
        self.round_trip = self.engine.round_trip_s() if self.two_roles else None

    def run(self, label: str) -> None:
        """Every prompt with one method."""
        self.run_interleaved([label])

    def run_interleaved(self, labels: list[str], after_round: Callable[[], None] | None = None) -> None:
        """Every prompt (a batch at a time) with each of `labels` in turn (take_turns)."""
        take_turns([(self, label) for label in labels], after_round)

    def method(self, label: str) -> EngineMethod | HfMethod:
        name, method_spec = self.parsed[label]
        if name in HF_METHODS:
            return _hf_method(self.engine_config, self.cluster if self.two_roles else None, self.args,
                              assisted=name == HF_ASSISTED)
        by_diffusion = METHODS[name].drafter == DIFFUSION_DRAFTER
        return EngineMethod(self.diffusion_engine if by_diffusion else self.engine, method_spec,
                            self.args.max_new_tokens, self.args.temperature)

    def read_channel(self, label: str) -> None:
        """Add the speculation channel's accounting since the last read (two roles only) to `label`'s."""
        if self.two_roles and self.parsed[label][0] not in HF_METHODS:
            totals = self.channel.setdefault(label, {})
            for key, value in self.engine.channel_stats().items():
                totals[key] = totals.get(key, 0) + value

    def close(self) -> None:
        if self.two_roles:
            self.engine.shutdown()

    def results(self) -> dict:
        from mirrorspec.workers.models import parse_dtype

        config, cluster, two_roles = self.engine_config, self.cluster, self.two_roles
        ref = None if self.args.temperature else self.records["ar"]  # sampled: equal to ar in law only
        results = {
            "target": str(config.target),
            "drafter": str(config.drafter),
            "diffusion_drafter": self.diffusion_drafter,
            "ngram_corpus": config.ngram_corpus,
            "prompt_categories": self.args.categories,  # --categories (None: all)
            # On Ray the target actor resolves `auto` as this process does (the same machine).
            "dtype": str(parse_dtype(config.dtype, device=config.device) if two_roles
                         else self.engine.target.model.dtype).removeprefix("torch."),
            "exact": config.exact,
            "exact_attention": exact_attention.step_form(config.device) if config.exact else None,
            "threads": cluster.target.threads if two_roles else torch.get_num_threads(),
            "placement": _placement(cluster) if two_roles else "in-process",
            "tp_size": cluster.tp_size,
            "device": config.device,
            "machine": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            # Which of the CPU's bf16 units PyTorch sees: oneDNN's kernels, and so the exact path's, differ by them.
            "cpu_bf16": {"avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
                         "amx": torch.cpu._is_amx_tile_supported()},
            "max_new_tokens": self.args.max_new_tokens,
            "temperature": self.args.temperature,
            "batch_size": self.args.batch_size,
            "spec": dataclasses.asdict(self.spec),
            "hf_assistant": self.args.hf_assistant or str(config.drafter),
            "hf_dtype": self.args.hf_dtype,
            "interleaved": self.args.interleave,
            "prompts": len(self.prompts),
            "forward_cost_1_thread": None if two_roles else forward_cost(self.engine, **cost_repeats(self.args)),
            "step_cost": None if two_roles else budget_curve(self.engine),
            "channel_round_trip_ms": None if self.round_trip is None else round(self.round_trip * 1000, 3),
            "methods": {m: summarize(rs, ref) for m, rs in self.records.items()},
        }
        for label, stats in self.channel.items():
            if label in self.records:
                results["methods"][label]["channel"] = channel_summary(stats, self.round_trip, self.records[label])
        base = results["methods"]["ar"]
        for summary in results["methods"].values():
            for key, block in [("overall", summary["overall"]), *summary["categories"].items()]:
                ref_block = base["overall"] if key == "overall" else base["categories"][key]
                block["speedup_vs_ar"] = round(block["tokens_per_s"] / ref_block["tokens_per_s"], 3)
        return results


def budget_curve(engine) -> dict[int, float] | None:
    """The target's cost curve the adaptive budget sized drafts by in this run (None: no adaptive row ran)."""
    cost = engine.scheduler.step_cost
    return cost.as_dict() if isinstance(cost, StepCost) else None


def take_turns(turns: list[tuple[BenchRun, str]], after_round: Callable[[], None] | None = None) -> None:
    """Every prompt (a batch at a time) through each (run, method label) in turn, so that a machine whose speed
    drifts (a shared VM) slows every method, and every run's engine, alike; each is warmed up first."""
    from tqdm import tqdm

    methods = [(run, label, run.method(label)) for run, label in turns]
    for run, label, method in methods:
        method.warm_up(run.prompts[0])
        run.read_channel(label)  # the warm-up's channel accounting is not the run's
    prompts, size = turns[0][0].prompts, turns[0][0].args.batch_size
    name = turns[0][1] if len(turns) == 1 else "interleaved"
    with tqdm(total=len(prompts) * len(turns), desc=f"bench {name}", unit="prompt", file=sys.stderr) as bar:
        for start in range(0, len(prompts), size):
            chunk = prompts[start:start + size]
            for run, label, method in methods:
                run.records.setdefault(label, []).extend(method(chunk))
                run.read_channel(label)
                bar.update(len(chunk))
            if after_round is not None:
                after_round()


def write_results(results: dict, out: str, stem: str, plot_fn=None) -> None:
    """<out>/<stem>.json, and with `plot_fn` its plot <stem>.png."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    if plot_fn is not None:
        plot_fn(results, out_dir / f"{stem}.png")
    print(f"wrote {out_dir / stem}.json" + (" and .png" if plot_fn else ""), file=sys.stderr)


def _placement(cluster) -> dict:
    roles = {role: {"resources": r.resources, "threads": r.threads, "cores": r.cores}
             for role, r in (("target", cluster.target), ("drafter", cluster.drafter))}
    if cluster.drafter_address:  # the drafter runs elsewhere, as it was started
        roles["drafter"] = {"address": cluster.drafter_address}
    return roles


def _hf_method(engine_config, cluster, args, assisted: bool) -> HfMethod:
    """transformers' `generate` (plain, or assisted by the drafter) on a fresh copy of the target with its stock
    kernels, in this process (on Ray: with the target actor's thread count, while the actors idle)."""
    from mirrorspec.orchestration.factory import eos_token_ids
    from mirrorspec.workers.models import load_model, parse_device, parse_dtype

    if args.hf_dtype:
        engine_config = dataclasses.replace(engine_config, dtype=args.hf_dtype)
    target = load_model(engine_config.target, dtype=parse_dtype(engine_config.dtype, device=engine_config.device),
                        device=parse_device(engine_config.device), field="target", cpu_linear="off")
    threads = cluster.target.threads if cluster is not None and cluster.target.threads else torch.get_num_threads()
    assistant = _hf_assistant(engine_config, args.hf_assistant) if assisted else None
    return HfMethod(target.model, assistant, target.tokenizer, args.max_new_tokens, eos_token_ids(target), threads,
                    args.temperature)


def channel_summary(stats: dict, round_trip_s: float | None, records: list[Record]) -> dict:
    """Mirror-SD's overlap accounting for one method's run over the two actors.

    hidden_fraction: the share of the drafter's compute the target did not wait for: 1 - (target's waits for
    drafts minus one channel round trip per draft) / drafter compute. Eq. 10 of arXiv 2510.13161 predicts a
    mirror step as lower + exit + max(upper, drafter rollout per step) + one round trip; `measured_step_ms` is
    the target forward plus the wait for the next draft."""
    steps = max(1, stats.get("steps", 0))
    proposes = max(1, stats.get("proposes", 0))
    rtt = round_trip_s or 0.0
    busy = stats.get("drafter_busy_s", 0.0)
    exposed = max(0.0, stats.get("wait_s", 0.0) - proposes * rtt)
    out = {
        "steps": stats.get("steps", 0),
        "drafts": stats.get("proposes", 0),
        "late_drafts": stats.get("late", 0),
        "drafter_busy_ms_per_step": round(busy / steps * 1000, 3),
        "target_wait_ms_per_step": round(stats.get("wait_s", 0.0) / steps * 1000, 3),
        "hidden_fraction": round(max(0.0, 1 - exposed / busy), 4) if busy else None,
        "channel_ms_per_step": round(max(0.0, stats.get("wait_s", 0.0) - stats.get("drafter_propose_s", 0.0))
                                     / proposes * 1000, 3),
        "measured_step_ms": round((stats.get("target_s", 0.0) + stats.get("propose_s", 0.0)) / steps * 1000, 3),
    }
    reused = sum(r.reused for r in records)
    if stats.get("exit_steps"):
        n = stats["exit_steps"]
        lower, exit_, upper = stats["lower_s"] / n, stats["exit_s"] / n, stats["upper_s"] / n
        rollout = max(0.0, busy - stats.get("drafter_propose_s", 0.0)) / n
        predicted = lower + exit_ + max(upper, rollout) + rtt
        # Eq. 10 assumes the next window is ready; a miss drafts afresh after the verdict, on the critical path.
        fresh = stats.get("drafter_propose_s", 0.0) / n
        out.update({
            "lower_ms": round(lower * 1000, 3), "exit_ms": round(exit_ * 1000, 3), "upper_ms": round(upper * 1000, 3),
            "rollout_ms": round(rollout * 1000, 3), "fresh_draft_ms": round(fresh * 1000, 3),
            # Of the branch rollouts alone (mean per step): the part that fits under the upper layers.
            "rollout_hidden_fraction": round(min(1.0, upper / rollout), 4) if rollout else None,
            "eq10_predicted_step_ms": round(predicted * 1000, 3),
            "eq10_plus_fresh_drafts_ms": round((predicted + fresh) * 1000, 3),
            "branch_reuse_rate": round(reused / max(1, sum(r.drafts for r in records)), 4),
            "exit_coverage": round(sum(r.exit_covered for r in records) / max(1, sum(r.exit_checked for r in records)),
                                   4),
        })
    return out


def _assistant_folder(engine_config, assistant: str | None) -> str | None:
    """--hf-assistant, else the engine's drafter (for `self`, a separate copy of the target: transformers keeps
    assistant state on the model object)."""
    from mirrorspec.orchestration.engine import SELF_DRAFTER
    from mirrorspec.orchestration.factory import resolve_drafter

    path = assistant or resolve_drafter(engine_config)
    return str(engine_config.target) if path == SELF_DRAFTER else path


def _hf_assistant(engine_config, assistant: str | None):
    """An assistant as a transformers model for `generate(..., assistant_model=...)`."""
    from mirrorspec.bench.hf_assistant import draft_vocab_assistant
    from mirrorspec.workers.drafter_model import is_drafter_folder
    from mirrorspec.workers.models import load_model, parse_device, parse_dtype

    path = _assistant_folder(engine_config, assistant)
    dtype = parse_dtype(engine_config.dtype, device=engine_config.device)
    device = parse_device(engine_config.device)
    if is_drafter_folder(path):
        return draft_vocab_assistant(path, dtype, device)
    return load_model(path, dtype=dtype, device=device, field="hf_assistant").model


def forward_cost(engine, context: int = 128, repeats: int = 20) -> dict:
    """Milliseconds per single-token decode forward on one thread: the target's and the drafter's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"target_ms": _decode_ms(engine.target, context, repeats)}
        session = engine.drafter
        if isinstance(session, DrafterSession):  # the in-process drafter model behind it
            out["drafter_ms"] = _decode_ms(session.drafter, context, repeats)
            out["drafter_over_target"] = round(out["drafter_ms"] / out["target_ms"], 4)
        return out
    finally:
        torch.set_num_threads(threads)


def _decode_ms(worker, context: int, repeats: int) -> float:
    seq = -1  # a sequence id no request uses
    feats = (lambda n: [torch.zeros(n, worker.feature_width)]) if worker.uses_features else (lambda n: None)
    worker.open(seq)
    try:
        worker.forward([seq], [list(range(1, context + 1))], features=feats(context))
        worker.forward([seq], [[5]], features=feats(1))  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            worker.forward([seq], [[5]], features=feats(1))
        return round((time.perf_counter() - start) / repeats * 1000, 3)
    finally:
        worker.release(seq)


def _print_table(results: dict) -> None:
    print(f"{'method':<12} {'tok/s':>8} {'speedup':>8} {'tau':>6} {'acc len':>7} {'=ar':>6}")
    for m, s in results["methods"].items():
        o = s["overall"]
        length = "-" if o.get("acceptance_length") is None else f"{o['acceptance_length']:.2f}"
        print(f"{m:<12} {o['tokens_per_s']:>8.2f} {o['speedup_vs_ar']:>7.2f}x {o['tau'] or 0:>6.2f} {length:>7} "
              f"{equal_column(o):>6}")


def equal_column(block: dict) -> str:
    """'n/N' prompts equal to ar token for token; '-' for a sampled run (equal in law only)."""
    return "-" if block.get("equal_to_ar") is None else f"{block['equal_to_ar']}/{block['prompts']}"
