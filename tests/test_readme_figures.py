"""README.md's measured figures against the files that hold the measurements.

Every claim below rebuilds README text from one or more results files (bench/results/<name>.json, the drafters'
training reports, and for one sentence the tensor-parallel test's own source) and asserts that this exact text is
in README.md: a whole table row must be a README line, a phrase must occur in the README with its line breaks
read as spaces. A wrong digit anywhere in a row or phrase fails the claim, and the message names the claim, the
text the files give and the nearest text the README has.

Numbers are printed the README's way: rounded half up from the value as the JSON file writes it (0.625 -> 63%,
10.305 -> 10.31), at the precision the README uses for that column. No models, no Ray: this reads files only.

README figures that no file holds (the feature drafter's training times, the CPU linear timings, the one-off
LLaDA comparison) say so in README.md and are not checked here.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DRAFTERS = ROOT / "drafters"


# ---------------------------------------------------------------------------------------------------------------
# Reading and printing


@cache
def result(name: str) -> dict:
    """bench/results/<name>.json"""
    return json.loads((RESULTS / f"{name}.json").read_text())


@cache
def drafter_file(path: str) -> dict:
    """drafters/<path>, e.g. smollm2-135m-feature/training_report.json"""
    return json.loads((DRAFTERS / path).read_text())


def dec(x) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def num(x, places: int = 0) -> str:
    """x rounded half up to `places` decimals, from its decimal text (what a reader of the JSON gets)."""
    return str(dec(x).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def pct(x, places: int = 0) -> str:
    """A fraction as a percentage number (no % sign)."""
    return num(dec(x) * 100, places)


def ratio(a, b, places: int = 2) -> str:
    return num(dec(a) / dec(b), places)


def span(values, fmt) -> str:
    """'lo-hi' of already comparable values, each printed with fmt."""
    return f"{fmt(min(values))}-{fmt(max(values))}"


def same(*values):
    """The one value all of these share; a text that no README holds when they differ (so the claim fails)."""
    return values[0] if len(set(values)) == 1 else f"<files disagree: {values}>"


def signed(x, places: int = 1) -> str:
    return ("+" if dec(x) >= 0 else "-") + num(abs(dec(x)), places)


def overall(name: str, method: str) -> dict:
    return result(name)["methods"][method]["overall"]


def channel(name: str, method: str = "mirror:gamma=3") -> dict:
    return result(name)["methods"][method]["channel"]


def fewest_identical(*names: str) -> int:
    """The fewest prompts on which any method of these runs gave its run's `ar` tokens."""
    return min(m["overall"]["equal_to_ar"] for n in names for m in result(n)["methods"].values())


def identical(*names: str) -> str:
    """'k/n': fewest_identical of n prompts."""
    return f"{fewest_identical(*names)}/{same(*(result(n)['prompts'] for n in names))}"


def cells(*values: str) -> str:
    """A markdown table row as README.md writes it ('| a | b | |' for an empty last cell)."""
    return "|" + "|".join(f" {v} " if v else " " for v in values) + "|"


def method_options(label: str) -> tuple[str, dict[str, str]]:
    """A bench method or setting `name:key=value+key=value` -> (name, {key: value})."""
    name, _, options = label.partition(":")
    return name, dict(kv.split("=") for kv in options.split("+") if kv)


def run_setting(run: dict) -> str:
    """A bench run's dtype, kernel path and threads, as the README writes them."""
    return f"{run['dtype']}, {'exact' if run['exact'] else 'fast'} path, {run['threads']} threads"


def equal_count(summary: dict) -> str:
    """'n/N': how many of the prompts came out identical to `ar`."""
    return f"{summary['equal_to_ar']}/{summary['prompts']}"


def tree_label(spec: dict) -> str:
    return f"`tree` (depth {spec['tree_depth']}, top-{spec['tree_topk']}, {spec['tree_nodes']} nodes)"


@dataclass(frozen=True)
class Row:
    """A whole README line."""
    text: str


@dataclass(frozen=True)
class Phrase:
    """Text somewhere in the README, line breaks read as spaces."""
    text: str


# ---------------------------------------------------------------------------------------------------------------
# The claims: one function per README table or paragraph; its docstring names the files.

CLAIMS = {}


def claim(fn):
    CLAIMS[fn.__name__] = fn
    return fn


@claim
def measured_header():
    """'## Measured' opening paragraph: issue3-feature-drafter.json, issue3-token-drafter.json."""
    names = ("issue3-feature-drafter", "issue3-token-drafter")
    runs = [result(n) for n in names]
    categories = result(names[0])["methods"]["ar"]["categories"]
    per = same(*(c["prompts"] for c in categories.values()))
    n = same(*(r["prompts"] for r in runs))
    return [
        Phrase(f"Greedy, batch {same(*(r['batch_size'] for r in runs))}, "
               f"{same(*(r['max_new_tokens'] for r in runs))} new tokens, {n} prompts ({per} per category of the "
               f"{len(categories)} in `bench/prompts/`), fp32, {same(*(r['threads'] for r in runs))} threads"),
        Phrase(f"every method's output was token-identical to `ar` on "
               + ("all" if fewest_identical(*names) == n else f"{fewest_identical(*names)} of the")
               + f" {n} prompts"),
    ]


@claim
def feature_drafter_table():
    """'Shipped feature drafter' table and paragraph: issue3-feature-drafter.json (+ the drafter's
    training_report.json for the held-out agreement)."""
    name = "issue3-feature-drafter"
    r, spec = result(name), result(name)["spec"]

    def positions(p):
        if p is None:
            return ""
        shown = p if len(p) <= 5 else p[:4]
        return ", ".join(num(x, 2) for x in shown) + (", ..." if len(p) > 5 else "")

    labels = {"ar": "`ar`", "chain:gamma=3": "`chain`, gamma 3", "chain": f"`chain`, gamma {spec['gamma']}",
              "chain:gamma=7": "`chain`, gamma 7", "tree": tree_label(spec)}
    rows = []
    for method, label in labels.items():
        o = overall(name, method)
        speedup = num(o["speedup_vs_ar"], 2) + "x"
        if o["speedup_vs_ar"] > 1:
            speedup = f"**{speedup}**"  # the README's bold for a win over `ar`
        rows.append(Row(cells(label, num(o["tau"], 2), num(o["tokens_per_s"], 2), speedup,
                              positions(o["acceptance_by_position"]))))
    cost = r["forward_cost_1_thread"]
    held_out = drafter_file("smollm2-135m-feature/init_training_report.json")["final"]["eval"]  # the drafter it ran
    return rows + [
        Phrase(f"--name {name}`"),
        Phrase(f"The drafter's decode forward costs {num(cost['drafter_ms'], 1)} ms against the target's "
               f"{num(cost['target_ms'], 1)} ms on one thread ({num(cost['drafter_over_target'], 3)})"),
        Phrase(f"it matches the target {pct(overall(name, 'chain:gamma=3')['acceptance_by_position'][0])}% of "
               f"the time on the bench prompts ({pct(held_out['top1_d1'])}% on the drafter's held-out training "
               f"distribution)"),
    ]


@claim
def token_drafter_table():
    """'Shipped token drafter' table and paragraph: issue3-token-drafter.json."""
    name = "issue3-token-drafter"
    r, spec = result(name), result(name)["spec"]
    ar, hf, tree = overall(name, "ar"), overall(name, "hf-assisted"), overall(name, "tree")
    chains = [overall(name, "chain"), overall(name, "chain:gamma=3")]
    cost = r["forward_cost_1_thread"]
    return [
        Phrase(f"--name {name}`; `chain` ran with gamma {spec['gamma']} from `ray_config.yaml`"),
        Row(cells("`ar`", num(ar["tau"], 2), num(ar["tokens_per_s"], 2), num(ar["speedup_vs_ar"], 2) + "x")),
        Row(cells(f"`chain`, gamma {spec['gamma']} (two runs)", " / ".join(sorted({num(c["tau"], 2) for c in chains})),
                  " / ".join(num(c["tokens_per_s"], 2) for c in chains),
                  " / ".join(num(c["speedup_vs_ar"], 2) + "x" for c in chains))),
        Row(cells(tree_label(spec), num(tree["tau"], 2), num(tree["tokens_per_s"], 2),
                  num(tree["speedup_vs_ar"], 2) + "x")),
        Row(cells("transformers assisted generation", num(hf["tau"], 2), num(hf["tokens_per_s"], 2),
                  num(hf["speedup_vs_ar"], 2) + "x")),
        Phrase(f"mirrorspec's `chain` is "
               f"{span([dec(c['tokens_per_s']) / dec(hf['tokens_per_s']) for c in chains], lambda v: num(v, 2))}x "
               f"faster than transformers' assisted generation"),
        Phrase(f"The token drafter's forward: {num(cost['drafter_ms'], 1)} ms against the target's "
               f"{num(cost['target_ms'], 1)} ms on one thread ({num(cost['drafter_over_target'], 3)})"),
    ]


@claim
def self_drafter_sentence():
    """'The target as its own drafter': issue2-self-drafter.json."""
    name = "issue2-self-drafter"
    ar, chain, tree, hf = (overall(name, m) for m in ("ar", "chain", "tree", "hf-assisted"))
    return [Phrase(
        f"`bench/results/{name}.json`): `ar` {num(ar['tokens_per_s'], 2)} tok/s; `chain` tau {num(chain['tau'], 2)}, "
        f"{num(chain['tokens_per_s'], 2)} tok/s; `tree` tau {num(tree['tau'], 2)}, {num(tree['tokens_per_s'], 2)} "
        f"tok/s; transformers assisted generation with a copy of the target tau {num(hf['tau'], 2)}, "
        f"{num(hf['tokens_per_s'], 2)} tok/s")]


MIRROR_RUNS = {"A": "issue4-mirror-b1", "B": "issue4-mirror-exit-head-b1", "C": "issue4-mirror-exit-head-b4"}
MIRROR_LABELS = {"ar": "`ar`", "chain:gamma=3": "`chain` g3", "tree": "`tree`", "mirror:gamma=3": "`mirror` g3"}


def mirror_label(run: dict, method: str) -> str:
    if method == "hf-assisted":
        kind = "token" if run["hf_assistant"].endswith("smollm2-135m-token") else run["hf_assistant"]
        return f"transformers assisted ({kind} drafter)"
    return MIRROR_LABELS[method]


@claim
def mirror_runs_table():
    """'Mirror-SD across two actors' paragraph and its A/B/C table: issue4-mirror-b1.json,
    issue4-mirror-exit-head-b1.json, issue4-mirror-exit-head-b4.json. The batch sizes and run C's methods come
    from the files too (a reviewer found the README claiming every method at batch 4)."""
    runs = {k: result(n) for k, n in MIRROR_RUNS.items()}
    one = lambda v: "1" if v == 1 else num(v, 2)  # noqa: E731  the README prints ar's own 1.0 as 1
    rows = []
    for k, name in MIRROR_RUNS.items():
        methods = runs[k]["methods"]
        batch = runs[k]["batch_size"]
        label = f"{k} (`{name}`" + (f", batch {batch}" if batch != 1 else "") + ")"
        outs = [m["overall"] for m in methods.values()]
        rows.append(Row(cells(label, " / ".join(mirror_label(runs[k], m) for m in methods),
                              " / ".join(one(o["tau"]) for o in outs),
                              " / ".join(num(o["tokens_per_s"], 2) for o in outs),
                              " / ".join(one(o["speedup_vs_ar"]) for o in outs))))
    placement = [r["placement"] for r in runs.values()]
    c_methods = [mirror_label(runs["C"], m).split(" ")[0] for m in runs["C"]["methods"]]
    threads = {p[role]["threads"] for p in placement for role in ("target", "drafter")}
    return rows + [
        Phrase(f"one thread each; {same(*(r['prompts'] for r in runs.values()))} prompts, greedy, "
               f"{same(*(r['max_new_tokens'] for r in runs.values()))} new tokens"),
        Phrase(f"the target actor pinned to core {same(*(p['target']['cores'][0] for p in placement))} and the "
               f"drafter actor to core {same(*(p['drafter']['cores'][0] for p in placement))}, "
               + ("one thread each" if threads == {1} else f"<threads {threads}>")),
        Phrase(f"every method token-identical to `ar` on {identical(*MIRROR_RUNS.values())} prompts in every run "
               f"(runs A and B at batch {same(runs['A']['batch_size'], runs['B']['batch_size'])}; run C at batch "
               f"{runs['C']['batch_size']}, with {', '.join(c_methods[:-1])} and {c_methods[-1]} only))"),
        Phrase(f"`ar` itself moved from {num(overall(MIRROR_RUNS['A'], 'ar')['tokens_per_s'], 2)} to "
               f"{num(overall(MIRROR_RUNS['B'], 'ar')['tokens_per_s'], 2)} tok/s between runs"),
    ]


@claim
def mirror_channel_table():
    """'`mirror`'s channel accounting' table: the `channel` of mirror:gamma=3 in the three issue4 files."""
    rows = []
    for k, name in MIRROR_RUNS.items():
        c = channel(name)
        rows.append(Row(cells(
            k, num(c["exit_coverage"], 2), pct(c["branch_reuse_rate"]) + "%",
            f"{num(c['lower_ms'])} / {num(c['upper_ms'])} ms", f"{num(c['rollout_ms'])} ms",
            f"{num(c['fresh_draft_ms'])} ms", pct(c["hidden_fraction"]) + "%", f"{num(c['eq10_predicted_step_ms'])} ms",
            f"{num(c['eq10_plus_fresh_drafts_ms'])} ms", f"{num(c['measured_step_ms'])} ms")))
    return rows


@claim
def mirror_channel_prose():
    """The paragraph under the channel table: issue4-mirror-b1.json, issue4-mirror-exit-head-b1.json,
    issue4-mirror-exit-head-b4.json (`channel_round_trip_ms`, each method's `channel`)."""
    names = list(MIRROR_RUNS.values())
    mirror = [channel(n) for n in names]
    rtt = [dec(result(n)["channel_round_trip_ms"]) for n in names]
    hidden = all(c["rollout_ms"] <= c["upper_ms"] for c in mirror)
    error = max(abs(dec(c["eq10_plus_fresh_drafts_ms"]) / dec(c["measured_step_ms"]) - 1) for c in mirror)

    def chain_step(n):  # the target's step under chain, less its wait for the drafter
        c = channel(n, "chain:gamma=3")
        return dec(c["measured_step_ms"]) - dec(c["target_wait_ms_per_step"])

    verify = [chain_step(n) / dec(channel(n, "ar")["measured_step_ms"]) for n in names]
    b = channel(MIRROR_RUNS["B"])
    b_mirror, b_chain = dec(b["lower_ms"]) + dec(b["upper_ms"]), chain_step(MIRROR_RUNS["B"])
    misses = [1 - dec(c["branch_reuse_rate"]) for c in mirror]
    return [
        Phrase(f"The channel's own round trip is {span(rtt, lambda v: num(v, 2))} ms (`channel_round_trip_ms`)."),
        Phrase("budget (rollout <= upper layers) and are hidden" if hidden else "<a rollout exceeds the upper layers>"),
        Phrase(f"the model predicts the measured step within {math.ceil(error * 100)}%"),
        Phrase(f"costs {span(verify, lambda v: num(v, 1))}x a one-token step (`chain`'s step less its wait for "
               f"drafts, against `ar`'s step, runs A-C)"),
        Phrase(f"the target's forward runs about {pct(b_mirror / b_chain - 1)}% slower while the drafter computes "
               f"on the other core (run B: {num(b_mirror)} ms of lower + upper layers against {num(b_chain)} ms "
               f"under `chain`"),
        Phrase(f"{span(misses, pct)}% of windows miss the precomputed branches (1 - windows reused)"),
        Phrase(f"and tau is {same(*(num(overall(n, 'mirror:gamma=3')['tau'], 1) for n in names))}"),
    ]


def tp_test_facts() -> tuple[int, str]:
    """(prompts, logit tolerance) from tests/test_tensor_parallel.py: the `[:N]` that picks the prompts of
    test_every_method_on_the_tp_group_equals_ar, and the bound in test_tp2_logits_match_tp1."""
    source = (ROOT / "tests" / "test_tensor_parallel.py").read_text()
    functions = {f.name: f for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef)}
    prompts = None
    for node in ast.walk(functions["test_every_method_on_the_tp_group_equals_ar"]):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "prompts" for t in node.targets):
            slices = [s.slice for s in ast.walk(node) if isinstance(s, ast.Subscript)
                      and isinstance(s.slice, ast.Slice) and isinstance(s.slice.upper, ast.Constant)]
            prompts = slices[0].upper.value
    tolerance = None
    for node in ast.walk(functions["test_tp2_logits_match_tp1"]):
        if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.LtE):
            tolerance = ast.get_source_segment(source, node.comparators[0])
    assert prompts and tolerance, "tests/test_tensor_parallel.py no longer shows its prompt count or tolerance"
    return prompts, tolerance


@claim
def tensor_parallel_table():
    """'Tensor parallelism, TP=2 against TP=1': issue5-tp1-b1.json, issue5-tp2-b1.json, and the prompt count and
    logit tolerance of tests/test_tensor_parallel.py."""
    tp1, tp2 = "issue5-tp1-b1", "issue5-tp2-b1"
    speedup = ratio(overall(tp2, "ar")["tokens_per_s"], overall(tp1, "ar")["tokens_per_s"])

    def row(label, name, ar_cell):
        m, c = overall(name, "mirror:gamma=3"), channel(name)
        return Row(cells(label, ar_cell, f"{num(m['tokens_per_s'], 2)} ({num(m['tau'], 2)})",
                         f"{num(c['measured_step_ms'])} / {num(c['eq10_plus_fresh_drafts_ms'])} ms",
                         pct(c["hidden_fraction"]) + "%"))

    alike = len({(overall(n, "mirror:gamma=3")["tau"], channel(n)["exit_coverage"], channel(n)["branch_reuse_rate"])
                 for n in (tp1, tp2)}) == 1
    prompts, tolerance = tp_test_facts()
    return [
        Phrase(f"--name {tp2}`; {same(result(tp1)['prompts'], result(tp2)['prompts'])} prompts, greedy, batch "
               f"{same(result(tp1)['batch_size'], result(tp2)['batch_size'])}"),
        row("1 rank on core 0, drafter on core 1", tp1, num(overall(tp1, "ar")["tokens_per_s"], 2)),
        row("2 ranks on cores 0 and 1, drafter on core 1 too", tp2,
            f"**{num(overall(tp2, 'ar')['tokens_per_s'], 2)} ({speedup}x)**"),
        Phrase(f"makes `ar` {speedup}x faster (its step: {num(channel(tp1, 'ar')['measured_step_ms'])} -> "
               f"{num(channel(tp2, 'ar')['measured_step_ms'])} ms"),
        Phrase(f"every method was identical to that run's `ar` on {identical(tp1, tp2)} prompts, "
               + ("with the same tau, early-exit coverage and branch reuse in both runs" if alike
                  else "<tau, coverage or reuse differ between the runs>")),
        Phrase(f"the tests check TP=2 against an unsplit target token for token on {prompts} prompts and the "
               f"logits within {tolerance}."),
    ]


@claim
def diffusion_strategies_table():
    """'Diffusion strategies' table and paragraph: issue6-diffusion-strategies.json (+ the dLLM's
    training_report.json for its training time and accuracy)."""
    r = result("issue6-diffusion-strategies")
    rows = []
    for key, s in r["settings"].items():
        acc = s["accuracy"]
        rows.append(Row(cells(
            f"`{key}`", num(s["forwards_per_token"], 3), num(s["forward_reduction_vs_reference"], 1) + "x",
            num(s["tokens_per_s"]), f"{pct(acc['overall'], 1)} ({signed(s['accuracy_change_points'])})",
            " / ".join(pct(acc[t]) for t in ("copy", "reverse", "sort", "add")))))
    tasks = r["settings"]["low-confidence"]["accuracy"].keys() - {"overall"}
    blocks = {s["params"]["block_length"] for s in r["settings"].values()}
    t09 = r["settings"]["threshold:threshold=0.9"]
    report = drafter_file("smollm2-tasks-dllm/training_report.json")
    last = report["history"][-1]
    threads = re.search(r"--threads (\d+)", report["command"]).group(1)
    return rows + [
        Phrase(f"`drafters/smollm2-tasks-dllm`, {r['examples']} held-out synthetic-task examples "
               f"({r['examples'] // len(tasks)} per task), {r['gen_length']}-token answer canvas, "
               + ("one block" if blocks == {r["gen_length"]} else "<several blocks>")
               + f", batch {r['batch_size']}, {r['threads']} threads"),
        Phrase(f"Fast-dLLM's threshold 0.9 needs {num(t09['forward_reduction_vs_reference'], 1)}x fewer forwards "
               f"than one token per step and is "
               + ("not less accurate" if t09["accuracy_change_points"] >= 0 else "less accurate")
               + f" ({signed(t09['accuracy_change_points'])} points)"),
        Phrase(f"({num(last['minutes'])} minutes of training on {threads} threads: "
               f"{pct(last['accuracy']['overall'], 1)}% exact match, {pct(last['accuracy']['add'])}% on addition)"),
    ]


@claim
def diffusion_caches_table():
    """'Approximate KV caches' table and paragraph: issue6-diffusion-caches.json."""
    settings = result("issue6-diffusion-caches")["settings"]
    rows, changed, cost = [], [], []
    for key, s in settings.items():
        strategy, opts = method_options(key)
        cache_kind = opts.pop("cache", None)
        base_key = strategy + (":" + "+".join(f"{k}={v}" for k, v in opts.items()) if opts else "")
        label = f"`{strategy}`" + (f" {opts['threshold']}" if "threshold" in opts else "")
        if cache_kind is None:
            rows.append(Row(cells(label, num(s["forwards_per_token"], 3), num(s["tokens_per_s"]),
                                  pct(s["accuracy"]["overall"], 1), "", "")))
            continue
        base = settings[base_key]
        agree = s["agreement_with_uncached"]
        changed.append(1 - dec(agree["tokens"]))
        cost.append((dec(base["accuracy"]["overall"]) - dec(s["accuracy"]["overall"])) * 100)
        rows.append(Row(cells(
            f"{label}, {cache_kind} cache", num(s["forwards_per_token"], 3),
            f"{num(s['tokens_per_s'])} ({ratio(s['tokens_per_s'], base['tokens_per_s'])}x)",
            pct(s["accuracy"]["overall"], 1), pct(agree["answers"], 1) + "%", pct(agree["tokens"], 1) + "%")))
    return rows + [Phrase(f"The caches change {span(changed, pct)}% of answer tokens and cost "
                          f"{span(cost, lambda v: num(v, 1))} points here")]


@claim
def diffusion_draft_table():
    """'diffusion-draft against chain and tree' table and paragraph: issue6-diffusion-draft.json (+ the
    block-diffusion drafter's training_report.json for its held-out top-1)."""
    name = "issue6-diffusion-draft"
    r, spec = result(name), result(name)["spec"]
    labels = {"ar": "`ar`", "chain": "`chain` (token drafter)", "tree": "`tree` (token drafter)",
              "diffusion-draft": "`diffusion-draft`"}
    rows = []
    for key, m in r["methods"].items():
        o = m["overall"]
        method, opts = method_options(key)
        opts = {k: int(v) for k, v in opts.items()}
        if method == "ar":
            shape, forwards, positions = "-", "-", ""
        else:
            if method == "chain":
                g = opts.get("gamma", spec["gamma"])
                depth, topk, nodes = g, 1, g
            else:
                depth, topk, nodes = (opts.get(k, spec[k]) for k in ("tree_depth", "tree_topk", "tree_nodes"))
            shape = f"{depth}, {topk}, {nodes}"
            forwards = "**1**" if method == "diffusion-draft" else str(depth)
            positions = " / ".join(num(p, 2) for p in o["acceptance_by_position"][:3])
        rows.append(Row(cells(labels[method], shape, forwards, num(o["tau"], 2), positions,
                              num(o["tokens_per_s"], 2), num(o["speedup_vs_ar"], 2) + "x")))
    small = "tree_depth=3+tree_topk=2+tree_nodes=5"
    tree, dd = overall(name, "tree"), overall(name, "diffusion-draft")
    tree3, dd3 = overall(name, f"tree:{small}"), overall(name, f"diffusion-draft:{small}")
    gains = [dec(dd["tokens_per_s"]) / dec(tree["tokens_per_s"]), dec(dd3["tokens_per_s"]) / dec(tree3["tokens_per_s"])]
    held_out = drafter_file("smollm2-135m-ddraft/training_report.json")["history"][-1]["eval_top1_by_depth"]
    return rows + [
        Phrase(f"--name {name}`: {r['prompts']} prompts, greedy, batch {r['batch_size']}, one process on "
               f"{r['threads']} threads"),
        Phrase(f"every method token-identical to `ar` on {identical(name)} prompts):"),
        Phrase(f"reaches the AR drafter's tau ({num(dd['tau'], 2)} vs {num(tree['tau'], 2)}, {num(dd3['tau'], 2)} vs "
               f"{num(tree3['tau'], 2)})"),
        Phrase(f"so it is {span(gains, lambda v: num(v, 2))}x faster than `tree`"),
        Phrase(f"held-out top-1 {num(held_out['1'], 2)} at depth 1 and {num(held_out['2'], 2)} at depth 2 for the "
               f"diffusion drafter"),
    ]


@claim
def serve_load_table():
    """'Serving under load' table and paragraph: issue7-serve-load.json, issue7-serve-load-mirror.json."""
    chain, mirror = result("issue7-serve-load"), result("issue7-serve-load-mirror")

    def outcome(run):
        codes = run["codes"]
        text = ", ".join(f"{n} {code}" for code, n in codes.items())
        return text + (", no other error" if len(codes) > 1 else "")

    def scale_label(run):
        up, down = run["events"]
        return (f"{run['clients']} closed-loop clients for {num(run['wall_s'])} s, `Scale` to {up['replicas']} at "
                f"{num(up['asked_s'])} s (ready at {num(up['done_s'])} s), to {down['replicas']} at "
                f"{num(down['asked_s'])} s")

    def row(label, run):
        seconds = lambda q: num(dec(run["ttft_ms"][q]) / 1000, 1)  # noqa: E731
        throughput = num(run["output_tokens_per_s"], 1)
        if "phases" in run:
            throughput += f" ({' / '.join(num(p['output_tokens_per_s'], 1) for p in run['phases'])} by phase)"
        return Row(cells(label, str(run["requests"]), outcome(run), f"{seconds('p50')} / {seconds('p99')} s",
                         f"{num(run['tpot_ms']['p50'])} / {num(run['tpot_ms']['p99'])} ms",
                         f"{num(run['itl_ms']['p50'])} / {num(run['itl_ms']['p99'])} ms", throughput))

    runs = [chain["burst"], chain["scale"], mirror["burst"], mirror["scale"]]
    finished = all(set(r["scale"]["codes"]) == {"OK"} for r in (chain, mirror))
    return [
        row(f"{chain['burst']['requests']} streams opened at once, 1 replica", chain["burst"]),
        row(scale_label(chain["scale"]), chain["scale"]),
        row("Mirror-SD pipeline replicas (`bench/configs/serve_load_mirror.yaml`: target and drafter actors of half "
            f"a core each): {mirror['burst']['requests']} streams at once", mirror["burst"]),
        row(f"Mirror-SD pipeline replicas: {scale_label(mirror['scale'])}", mirror["scale"]),
        Phrase(f"loopback, {same(*(r['prompts'] for r in runs))} distinct chat prompts"),
        Phrase(f"({min(r['prompts_with_one_answer'] for r in runs)} of {same(*(r['prompts'] for r in runs))} prompts "
               f"in every run)"),
        Phrase(f"The retiring replica held {chain['scale']['events'][1]['in_flight']} requests "
               f"({mirror['scale']['events'][1]['in_flight']} in the Mirror-SD run) when asked to go and "
               + ("finished them all" if finished else "<did not finish them all>")),
    ]


@claim
def serve_load_on_serve_tables():
    """The table after 'Serving under load': the same bench on the Ray Serve replicas through the server process's
    fronts (issue20-serve-load-on-serve.json), through Serve's proxies (issue20-serve-load-serve-ingress.json) and
    with Mirror-SD pipeline replicas (issue20-serve-load-mirror-on-serve.json), each against the hand-made router's
    last commit rerun the same day (issue20-router-rerun.json, issue20-router-rerun-mirror.json); the router's
    issue-7 burst (issue7-serve-load.json), its morning rerun (issue20-router-rerun-early.json) and the Serve code
    before the bound fixes (issue20-serve-before-bound-fix.json)."""

    def row(label, run, before):
        seconds = lambda q: num(dec(run["ttft_ms"][q]) / 1000, 1)  # noqa: E731
        ratio = num(dec(run["output_tokens_per_s"]) / dec(before["output_tokens_per_s"]), 2) + "x"
        return Row(cells(label, str(run["requests"]), ", ".join(f"{n} {code}" for code, n in run["codes"].items()),
                         f"{seconds('p50')} / {seconds('p99')} s",
                         f"{num(run['tpot_ms']['p50'])} / {num(run['tpot_ms']['p99'])} ms",
                         f"{num(before['output_tokens_per_s'], 1)}", f"{num(run['output_tokens_per_s'], 1)} ({ratio})"))

    rows, runs = [], []
    for name, path, router in (("issue20-serve-load-on-serve", "server process", "issue20-router-rerun"),
                               ("issue20-serve-load-serve-ingress", "Serve's proxies", "issue20-router-rerun"),
                               ("issue20-serve-load-mirror-on-serve", "server process, Mirror-SD pipelines",
                                "issue20-router-rerun-mirror")):
        r, before = result(name), result(router)
        runs += [r["burst"], r["scale"], before["burst"], before["scale"]]
        rows += [row(f"burst, {path}", r["burst"], before["burst"]),
                 row(f"1 -> 2 -> 1, {path}", r["scale"], before["scale"])]
    prompts = same(*(r["prompts"] for r in runs))
    then, early, late = (result(n) for n in ("issue7-serve-load", "issue20-router-rerun-early", "issue20-router-rerun"))
    unfixed = result("issue20-serve-before-bound-fix")
    burst = lambda r: num(r["burst"]["output_tokens_per_s"], 1)  # noqa: E731
    rows += [Phrase(f"the router's own burst gave {burst(then)} tokens/s at issue 7, {burst(early)} in the morning of "
                    f"2026-12-02 and {burst(late)} an hour and a half later"),
             Phrase(f"gave {burst(unfixed)} / {num(unfixed['scale']['output_tokens_per_s'], 1)} tokens/s (burst / "
                    f"scaling run; the router then: {burst(early)} / {num(early['scale']['output_tokens_per_s'], 1)}) "
                    f"and let {unfixed['burst']['codes']['OK']} of {unfixed['burst']['requests']} in")]
    agreed = min(r["prompts_with_one_answer"] for r in runs)
    return rows + [Phrase(f"every prompt's answer was the same everywhere ({agreed} of {prompts} in every run)")]


@claim
def batch_job_paragraph():
    """'Batch job, crash and rerun': issue7-batch-job-resume.json."""
    r = result("issue7-batch-job-resume")
    clean, rerun, check = r["clean_run"], r["rerun"], r["rerun"]["check"]
    each_once = check["lines_in_part_files"] == check["distinct_ids"] == rerun["summary"]["rows"]
    return [
        Phrase(f"{clean['summary']['rows']} distinct prompts from the training prompt bank"),
        Phrase(f"a clean run took {num(clean['submit_to_end_s'])} s from submit to end "
               f"({num(clean['summary']['seconds'])} s of generation, {num(clean['summary']['tokens_per_s'], 1)} "
               f"tokens/s, tau {num(clean['summary']['tau'], 2)})"),
        Phrase(f"once {r['crash']['rows_answered_when_killed']} rows were answered"),
        Phrase(f"answered the other {rerun['summary']['rows_this_run']} rows ({num(rerun['submit_to_end_s'])} s, "
               f"model loading included): {rerun['summary']['rows']} rows, "
               + ("each once" if each_once else "<not each once>")
               + f", {check['missing']} missing, {check['duplicates']} duplicated, "
               f"{check['answers_equal_to_clean_run']} of {rerun['summary']['rows']} answers equal to the clean run's"),
    ]


@claim
def drafters_and_exit_head():
    """Held-out figures in 'Drafters' and 'Mirror-SD across devices': drafters/smollm2-135m-feature and
    smollm2-135m-token training_report.json, drafters/smollm2-135m-exit-head/exit_head.json."""
    feature = drafter_file("smollm2-135m-feature/training_report.json")["final"]["eval"]
    token = drafter_file("smollm2-135m-token/training_report.json")
    head = drafter_file("smollm2-135m-exit-head/exit_head.json")["report"]
    return [
        Phrase(f"held-out top-1 agreement with the target {num(feature['top1_d1'], 2)} / {num(feature['top1_d2'], 2)}"
               f" / {num(feature['top1_d3'], 2)} at draft depths 1 / 2 / 3"),
        Phrase(f"({num(dec(token['seconds']) / 60)} min; held-out top-1 {num(token['final']['eval']['top1'], 2)})"),
        Phrase(f"puts the final token in its top-8 only {pct(head['coverage_logit_lens']['top8'])}% of the time"),
        Phrase(f"raises that to {pct(head['coverage_exit_head']['top8'])}% (held-out, layer {head['layer']})"),
    ]


EXACT_RUN = "issue16-exact-variants"
VARIANT_LABELS = {"float32:fast": "fp32, fast", "float32:exact": "fp32, exact", "bfloat16:fast": "bf16, fast",
                  "bfloat16:exact": "bf16, exact"}


def exact_method_label(method: str, spec: dict) -> str:
    if method.startswith("tree"):
        return "`tree` ({tree_depth}, top-{tree_topk}, {tree_nodes})".format(
            **{**spec, **method_options(method)[1]})
    return {"ar": "`ar`", "chain": "`chain` g{gamma}, adaptive".format(**spec), "chain:gamma=3": "`chain` g3",
            "hf-generate": "transformers `generate`"}[method]


@claim
def exact_variants_table():
    """'Exact at any dtype' tables: issue16-exact-variants.json (one run: four engines, methods taking turns)."""
    return variants_table(EXACT_RUN)


EXACT_BF16_RUN = "issue16-exact-variants-avx512bf16"


@claim
def exact_variants_native_bf16_table():
    """'On a CPU with native bf16' tables: issue16-exact-variants-avx512bf16.json (one run, three engines)."""
    return variants_table(EXACT_BF16_RUN)


EXACT_DTYPES_RUN = "issue17-exact-dtypes-interleaved"


@claim
def exact_dtypes_interleaved_table():
    """'On a CPU with native bf16': the best exact dtype, issue17-exact-dtypes-interleaved.json (interleaved)."""
    return variants_table(EXACT_DTYPES_RUN)


def variants_table(name: str):
    """A `bench --variants` run's rows (variant, method, tok/s, ratios, tau, = ar), verify cost rows and setting."""
    run = result(name)
    first = next(iter(run["variants"].values()))
    rows = [Row(cells(VARIANT_LABELS[r["variant"]], exact_method_label(r["method"], first["spec"]),
                      num(r["tokens_per_s"], 2), num(r["vs_first_ar"], 2) + "x",
                      num(r["vs_hf_generate_fp32"], 2) + "x", num(r["tau"], 2), equal_count(r)))
            for r in run["summary"]]
    for variant, v in run["variants"].items():
        rows.append(Row(cells(VARIANT_LABELS[variant], *(num(ms, 1) for ms in v["verify_cost"]["ms"].values()),
                              num(v["verify_cost"]["ratio"]["8"], 2) + "x")))
    return rows + [Phrase(f"{same(*(v['prompts'] for v in run['variants'].values()))} prompts (one per category), "
                          f"{same(*(v['max_new_tokens'] for v in run['variants'].values()))} new tokens, greedy, "
                          f"batch 1, {same(*(v['threads'] for v in run['variants'].values()))} threads"),
                   Phrase(f"--name {name}`")]


NGRAM_RUN = "issue17-ngram"
NGRAM_CATEGORIES = ("extraction", "summarization", "coding")


def ngram_label(method: str) -> str:
    if method == "ar":
        return "`ar`"
    if method.startswith("chain"):
        return f"`chain` g{method.partition('=')[2]} (feature drafter)"
    shape = method_options(method)[1]
    return f"`ngram` (depth {shape['tree_depth']}, top-{shape['tree_topk']}, {shape['tree_nodes']} nodes)"


@claim
def ngram_table():
    """'Model-free drafts' table: issue17-ngram.json (overall and the three copy-heavy categories)."""
    run = result(NGRAM_RUN)
    rows = []
    for method, summary in run["methods"].items():
        o = summary["overall"]
        per_category = [num(summary["categories"][c]["speedup_vs_ar"], 2) + "x" for c in NGRAM_CATEGORIES]
        rows.append(Row(cells(ngram_label(method), num(o["tau"], 2), num(o["tokens_per_s"], 2),
                              num(o["speedup_vs_ar"], 2) + "x", *per_category, equal_count(o))))
    return rows + [Phrase(f"{run['prompts']} prompts ({run['prompts'] // 13} per category), "
                          f"{run['max_new_tokens']} new tokens, greedy, batch {run['batch_size']}, {run_setting(run)}"),
                   Phrase(f"--name {NGRAM_RUN}`")]


ADAPTIVE_RUNS = ("issue17-adaptive-b1", "issue17-adaptive-b8")


def switch_label(method: str, switch: str, on: str, off: str) -> str:
    """`chain:gamma=5+adaptive=off` -> '`chain` g5, <off>' (ar: '`ar`')."""
    name, shape = method_options(method)
    label = f"`{name}`" + (f" g{shape['gamma']}" if "gamma" in shape else "")
    return label + ("" if name == "ar" else f", {off}" if shape.get(switch) == "off" else f", {on}")


HF_LABELS = {"hf-generate": "transformers `generate`", "hf-assisted": "transformers assisted, token drafter"}


def budget_table(names: tuple[str, ...]):
    """Rows (batch, method, tau, tok/s, vs ar, accepted / predicted, cut, = ar) and each run's setting."""
    rows, phrases = [], []
    for name in names:
        run = result(name)
        for method, summary in run["methods"].items():
            o = summary["overall"]
            drafted = method not in ("ar", *HF_LABELS)
            label = HF_LABELS.get(method) or switch_label(method, "adaptive", "adaptive", "fixed")
            if method in HF_LABELS and run.get("hf_dtype"):  # transformers at its own dtype (bench --hf-dtype)
                label += f" ({run['hf_dtype']})"
            predicted = f"{o['accepted']} / {num(o['predicted_accepted'])}" if drafted else "-"
            rows.append(Row(cells(str(run["batch_size"]), label, num(o["tau"], 2), num(o["tokens_per_s"], 2),
                                  num(o["speedup_vs_ar"], 2) + "x", predicted, str(o["unverified"]),
                                  equal_count(o))))
        phrases.append(Phrase(f"batch {run['batch_size']}: {run['prompts']} prompts, {run['max_new_tokens']} new "
                              f"tokens, greedy, {run_setting(run)}"))
        phrases.append(Phrase(f"--name {name}`"))
    return rows + phrases


@claim
def adaptive_table():
    """'Adaptive speculation' table (the first version): issue17-adaptive-b1.json and -b8.json (one run each)."""
    return budget_table(ADAPTIVE_RUNS)


PADDED_RUNS = ("issue17-padded-budget-b1", "issue17-padded-budget-b8")


@claim
def padded_budget_table():
    """'The padded width and the drafting stop rule' table: issue17-padded-budget-b1.json and -b8.json."""
    return budget_table(PADDED_RUNS)


BF16_RUNS = ("issue17-bf16-exact-b1", "issue17-bf16-exact-b8")


@claim
def native_bf16_budget_table():
    """'On a CPU with native bf16' speculation table: issue17-bf16-exact-b1.json and -b8.json (interleaved)."""
    return budget_table(BF16_RUNS)


MIRROR_BF16_RUN = "issue17-mirror-drafter-next-b1"


@claim
def mirror_native_bf16_table():
    """'On a CPU with native bf16' mirror table: issue17-mirror-drafter-next-b1.json (two actors, interleaved)."""
    run = result(MIRROR_BF16_RUN)
    rows = []
    for method, summary in run["methods"].items():
        o, c = summary["overall"], summary["channel"]
        label = switch_label(method, "adaptive", "adaptive", "fixed")
        if method.startswith("mirror"):  # its windows are verified whole: no adaptive budget
            label = label.removesuffix(", adaptive")
        hidden = "-" if c["hidden_fraction"] is None else pct(c["hidden_fraction"]) + "%"
        rows.append(Row(cells(label, num(o["tau"], 2), num(o["tokens_per_s"], 2), num(o["speedup_vs_ar"], 2) + "x",
                              num(c["measured_step_ms"], 1), hidden, equal_count(o))))
    mirror = run["methods"]["mirror:gamma=3"]["channel"]
    return rows + [Phrase(f"{run['prompts']} prompts, {run['max_new_tokens']} new tokens, greedy, batch "
                          f"{run['batch_size']}, one thread per actor"), Phrase(f"--name {MIRROR_BF16_RUN}`"),
                   Phrase(f"{pct(mirror['branch_reuse_rate'])}% of its windows reuse a precomputed branch"),
                   Phrase(f"early-exit coverage {num(mirror['exit_coverage'], 2)}")]


FUSED_RUNS = {"shipped": "issue17-drafter-next-b1", "control": "issue17-drafter-control-b1",
              "fused": "issue17-drafter-fused-b1"}


@claim
def fused_features_table():
    """'Fused layer features' table: the three drafters' runs; held-out figures from the control's and the fused
    drafter's training files."""
    labels = {f"chain:gamma={g}+adaptive=off": f"`chain` g{g}, fixed" for g in (3, 5, 7)}
    rows = []
    for method, label in labels.items():
        o = {who: overall(name, method) for who, name in FUSED_RUNS.items()}
        rows.append(Row(cells(label, *(num(o[who]["tau"], 2) for who in FUSED_RUNS),
                              num(o["control"]["speedup_vs_ar"], 2) + "x", num(o["fused"]["speedup_vs_ar"], 2) + "x",
                              identical(FUSED_RUNS["control"], FUSED_RUNS["fused"]))))
    held_out = {who: result(f"issue17-drafter-{who}-training")["training_report"]["final"]["eval"]
                for who in ("control", "fused")}
    depths = {who: " / ".join(num(e[f"top1_d{d}"], 2) for d in (1, 2, 3)) for who, e in held_out.items()}
    cost = {who: num(result(FUSED_RUNS[who])["forward_cost_1_thread"]["drafter_over_target"], 3)
            for who in ("control", "fused")}
    return rows + [Phrase(f"control {depths['control']}, fused {depths['fused']}"),
                   Phrase(f"costs {cost['fused']} of the target's against the control's {cost['control']}")]


MAGPIE_RUN = "issue17-drafter-magpie-b1"


@claim
def magpie_drafter_table():
    """'More varied prompts' table and sentences: issue17-drafter-magpie-b1.json beside the shipped and control
    runs; held-out figures per data folder from issue17-drafter-magpie-training.json."""
    labels = {f"chain:gamma={g}+adaptive=off": f"`chain` g{g}, fixed" for g in (3, 5, 7)}
    rows = []
    for method, label in labels.items():
        shipped, control, mixed = (overall(name, method) for name in
                                   (FUSED_RUNS["shipped"], FUSED_RUNS["control"], MAGPIE_RUN))
        rows.append(Row(cells(label, num(shipped["tau"], 2), num(control["tau"], 2), num(mixed["tau"], 2),
                              num(mixed["speedup_vs_ar"], 2) + "x", identical(MAGPIE_RUN))))
    by_data = result("issue17-drafter-magpie-training")["training_report"]["eval_by_data"]
    depths = {folder.rsplit("/", 1)[1]: " / ".join(num(e[f"top1_d{d}"], 2) for d in (1, 2, 3))
              for folder, e in by_data.items()}
    default, corpus = (overall(MAGPIE_RUN, m) for m in ("chain", "chain:use_corpus=on"))
    return rows + [Phrase(f"depths 1 / 2 / 3: {depths['SmolLM2-135M-Instruct']} on the bank's held-out answers"),
                   Phrase(f"{depths['SmolLM2-135M-Instruct-magpie']} on the Magpie held-out answers"),
                   Phrase(f"runs at {num(default['speedup_vs_ar'], 2)}x `ar` (tau {num(default['tau'], 2)}) in this "
                          f"run; with the corpus on (`chain:use_corpus=on`) {num(corpus['speedup_vs_ar'], 2)}x (tau "
                          f"{num(corpus['tau'], 2)})")]


BRANCHES_RUN = "issue17-ngram-branches-b1"


@claim
def ngram_branches_table():
    """'ngram branches in model drafts' table: issue17-ngram-branches-b1.json (one run)."""
    run = result(BRANCHES_RUN)
    rows = []
    for method, summary in run["methods"].items():
        o = summary["overall"]
        label = switch_label(method, "ngram_branches", "with branches", "no branches")
        rows.append(Row(cells(label, num(o["tau"], 2), num(o["tokens_per_s"], 2), num(o["speedup_vs_ar"], 2) + "x",
                              equal_count(o))))
    return rows + [Phrase(f"{run['prompts']} prompts, {run['max_new_tokens']} new tokens, greedy, batch "
                          f"{run['batch_size']}, {run_setting(run)}"), Phrase(f"--name {BRANCHES_RUN}`")]


CORPUS_RUNS = ("issue17-ngram-corpus-b1", "issue17-ngram-corpus-copy-b1")
CORPUS_MAGPIE_RUN = "issue17-ngram-corpus-magpie-only-b1"  # --ngram-corpus of the Magpie answers alone


def corpus_label(method: str, run: dict) -> str:
    if method.startswith("hf-"):
        return f"{HF_LABELS[method]} ({run['hf_dtype']})"
    return switch_label(method, "use_corpus", "with corpus", "own text only")


@claim
def ngram_corpus_tables():
    """'A corpus of the target's own answers' tables: issue17-ngram-corpus-b1.json (every category) and
    issue17-ngram-corpus-copy-b1.json (every prompt of the three copy-heavy categories)."""
    rows, phrases = [], []
    for name in CORPUS_RUNS:
        run = result(name)
        for method, summary in run["methods"].items():
            o = summary["overall"]
            per_category = [num(summary["categories"][c]["speedup_vs_ar"], 2) + "x" for c in NGRAM_CATEGORIES]
            rows.append(Row(cells(corpus_label(method, run), num(o["tau"], 2), num(o["tokens_per_s"], 2),
                                  num(o["speedup_vs_ar"], 2) + "x", *per_category, equal_count(o))))
        phrases += [Phrase(f"{run['prompts']} prompts, {run['max_new_tokens']} new tokens, greedy, batch "
                           f"{run['batch_size']}, {run_setting(run)}"), Phrase(f"--name {name}`")]
    alone = result(CORPUS_MAGPIE_RUN)
    ngram, chain = (alone["methods"][m]["overall"] for m in ("ngram", "chain:gamma=5"))
    assert alone["ngram_corpus"].endswith("magpie-corpus.jsonl.gz")  # the run this sentence describes
    phrases.append(Phrase(f"`ngram` still reaches tau {num(ngram['tau'], 2)} and {num(ngram['speedup_vs_ar'], 2)}x "
                          f"`ar`, `chain` g5 {num(chain['speedup_vs_ar'], 2)}x, {identical(CORPUS_MAGPIE_RUN)} "
                          f"identical"))
    return rows + phrases


DEFAULT_RUNS = ("issue17-default-magpie-b1", "issue17-default-magpie-b8")  # run while that drafter was the default
DEFAULT_RUN_LABELS = {"ar": "`ar`", "chain": "`chain` (the default)",
                      "chain:use_corpus=on": "`chain`, corpus branches",
                      "chain:gamma=5+adaptive=off": "`chain` g5, fixed", "tree": "`tree`, adaptive",
                      "ngram": "`ngram` (with corpus)", "hf-generate": "transformers `generate` (float32)"}


@claim
def default_drafter_table():
    """'The bank + Magpie drafter at batch 8' first table: issue17-default-magpie-b1.json and -b8.json; the
    default's ratio to transformers' float32 generate and `ngram` on the copy-heavy categories at batch 1."""
    rows, phrases = [], []
    for name in DEFAULT_RUNS:
        run = result(name)
        assert run["drafter"].endswith("smollm2-135m-feature-magpie") and run["ngram_corpus"] == "default"
        for method, summary in run["methods"].items():
            o = summary["overall"]
            rows.append(Row(cells(str(run["batch_size"]), DEFAULT_RUN_LABELS[method], num(o["tau"], 2),
                                  num(o["tokens_per_s"], 2), num(o["speedup_vs_ar"], 2) + "x", equal_count(o))))
        phrases.append(Phrase(f"--name {name}`"))
    b1 = result(DEFAULT_RUNS[0])["methods"]
    vs_hf = dec(b1["chain"]["overall"]["tokens_per_s"]) / dec(b1["hf-generate"]["overall"]["tokens_per_s"])
    ngram = ", ".join(f"{c} {num(b1['ngram']['categories'][c]['speedup_vs_ar'], 2)}x" for c in NGRAM_CATEGORIES)
    return rows + phrases + [Phrase(f"the default was {num(vs_hf, 2)}x transformers' float32 `generate`"),
                             Phrase(f"`ngram` alone: {ngram}")]


# (drafter label, batch): the run, and its repeat (None: not repeated)
DRAFTER_PAIRS = {("shipped", 1): ("issue17-previous-drafter-b1", None),
                 ("bank + Magpie", 1): ("issue17-default-magpie-b1", "issue17-magpie-drafter-repeat-b1"),
                 ("shipped", 8): ("issue17-previous-drafter-b8", "issue17-previous-drafter-repeat-b8"),
                 ("bank + Magpie", 8): ("issue17-default-magpie-b8", "issue17-magpie-drafter-repeat-b8")}


@claim
def drafter_pair_table():
    """The shipped against the bank + Magpie drafter, `chain` at batch 1 and 8 on one cached cost curve."""
    rows = []
    for (label, batch), (name, repeat) in DRAFTER_PAIRS.items():
        runs = [result(n) for n in (name, repeat) if n]
        assert all(r["batch_size"] == batch and r["step_cost"] == runs[0]["step_cost"] for r in runs)
        assert runs[0]["drafter"].endswith("smollm2-135m-feature" if label == "shipped" else "feature-magpie")
        chain = overall(name, "chain")
        again = num(overall(repeat, "chain")["speedup_vs_ar"], 2) + "x" if repeat else "-"
        equal = min(overall(n, "chain")["equal_to_ar"] for n in (name, repeat) if n)
        rows.append(Row(cells(label, str(batch), num(chain["tau"], 2), num(chain["speedup_vs_ar"], 2) + "x", again,
                              f"{equal}/{chain['prompts']}")))
    return rows


C_KERNEL_RUNS = ("issue17-c-kernel-b1", "issue17-c-kernel-b8")


@claim
def c_kernel_table():
    """'The exact attention as a C kernel': issue17-c-kernel-b1.json and -b8.json (interleaved), against the
    PyTorch form's run of the same day (issue17-previous-drafter-b1.json)."""
    b1, before = result(C_KERNEL_RUNS[0])["methods"], result("issue17-previous-drafter-b1")["methods"]
    assert all(result(n)["drafter"].endswith("drafters/smollm2-135m-feature")
               for n in (*C_KERNEL_RUNS, "issue17-previous-drafter-b1"))
    b8 = result(C_KERNEL_RUNS[1])["methods"]
    curve = result(C_KERNEL_RUNS[0])["step_cost"]
    assert curve == result(C_KERNEL_RUNS[1])["step_cost"]  # "both runs on one cost curve"
    assert max(b8, key=lambda m: b8[m]["overall"]["tokens_per_s"]) == "ngram"
    speed = {m: num(b1[m]["overall"]["tokens_per_s"], 2) for m in b1}
    ngram = ", ".join(f"{num(b1['ngram']['categories'][c]['speedup_vs_ar'], 2)}x on {c}" for c in NGRAM_CATEGORIES)
    return budget_table(C_KERNEL_RUNS) + [
        Phrase(f"`ar` runs at {speed['ar']} tok/s against {num(before['ar']['overall']['tokens_per_s'], 2)}"),
        Phrase(f"`chain` at {speed['chain']} against {num(before['chain']['overall']['tokens_per_s'], 2)}"),
        Phrase(f"now {ratio(b1['chain']['overall']['tokens_per_s'], b1['hf-generate']['overall']['tokens_per_s'])}x "
               f"transformers' float32 `generate` at batch 1"),
        Phrase(f"and {num(overall(C_KERNEL_RUNS[1], 'chain')['speedup_vs_ar'], 2)}x `ar` at batch 8"),
        Phrase(f"({num(b1['chain']['overall']['speedup_vs_ar'], 2)}x against "
               f"{num(before['chain']['overall']['speedup_vs_ar'], 2)}x)"),
        Phrase(f"(8 tokens: {num(curve['8'], 2)}x a decode step in this run's cost curve)"),
        Phrase(f"(tau {num(b1['chain']['overall']['tau'], 2)} at batch 1 against "
               f"{num(before['chain']['overall']['tau'], 2)})"),
        Phrase(ngram),
        Phrase(f"the fastest method at batch 8 ({num(b8['ngram']['overall']['speedup_vs_ar'], 2)}x)")]


INPLACE_RUNS = ("issue17-c-kernel-inplace-b1", "issue17-c-kernel-inplace-b8")


@claim
def c_kernel_inplace_repeat():
    """'The exact attention as a C kernel', the repeat paragraph: issue17-c-kernel-inplace-b1.json and -b8.json
    against issue17-c-kernel-b1.json."""
    b1, b8 = (result(n)["methods"] for n in INPLACE_RUNS)
    assert all(result(n)["exact_attention"] == "C kernel" for n in INPLACE_RUNS)
    first = result(C_KERNEL_RUNS[0])
    vs = {m: num(b1[m]["overall"]["speedup_vs_ar"], 2) for m in ("chain", "tree", "ngram")}
    at8 = {m: num(b8[m]["overall"]["speedup_vs_ar"], 2) for m in ("chain", "tree", "ngram")}
    hf = b1["hf-generate"]["overall"]["tokens_per_s"]
    return [Phrase(f"transformers' float32 `generate` {num(hf, 2)} tok/s against "
                   f"{num(first['methods']['hf-generate']['overall']['tokens_per_s'], 2)} above"),
            Phrase(f"at batch 1 `chain` {vs['chain']}x `ar` (tau {num(b1['chain']['overall']['tau'], 2)}), `tree` "
                   f"{vs['tree']}x, `ngram` {vs['ngram']}x, `chain` "
                   f"{ratio(b1['chain']['overall']['tokens_per_s'], hf)}x transformers' float32 `generate`; at batch 8 "
                   f"`chain` {at8['chain']}x, `tree` {at8['tree']}x, `ngram` {at8['ngram']}x"),
            Phrase(f"priced 8 tokens at {num(result(INPLACE_RUNS[0])['step_cost']['8'], 2)} forwards "
                   f"({num(first['step_cost']['8'], 2)} above)"),
            Phrase("named `issue17-c-kernel-inplace-b1` and `-b8`")]


THREADED_RUNS = ("issue17-threaded-kernel-b1", "issue17-threaded-kernel-b8", "issue17-threaded-kernel-repeat-b1",
                 "issue17-threaded-kernel-repeat-b8")


@claim
def threaded_kernel_table():
    """'The kernel on every thread; `tree` the default': issue17-threaded-kernel-b1/-b8.json and their repeats,
    against the single-threaded kernel's runs on the same slow phase (issue17-c-kernel-inplace-b1/-b8.json)."""
    runs = [result(n) for n in THREADED_RUNS]
    assert all(r["exact_attention"] == "C kernel" and r["drafter"].endswith("drafters/smollm2-135m-feature")
               for r in runs)
    b1, b8, again1, again8 = (r["methods"] for r in runs)
    before1, before8 = (result(n)["methods"] for n in INPLACE_RUNS)
    vs = lambda methods, m: num(methods[m]["overall"]["speedup_vs_ar"], 2)  # noqa: E731
    speed = lambda methods, m: num(methods[m]["overall"]["tokens_per_s"], 2)  # noqa: E731
    assert all(methods["tree"]["overall"]["accepted"] == b8["tree"]["overall"]["accepted"] for methods in (again8,))
    return budget_table(THREADED_RUNS) + [
        Phrase(f"`generate` {speed(b1, 'hf-generate')} tok/s against {speed(before1, 'hf-generate')}"),
        Phrase(f"`ar` runs at {speed(b1, 'ar')} tok/s against {speed(before1, 'ar')} and `tree` at {speed(b1, 'tree')} "
               f"against {speed(before1, 'tree')} at batch 1; at batch 8 `ar` at {speed(b8, 'ar')} against "
               f"{speed(before8, 'ar')}"),
        Phrase(f"`tree` is {vs(b1, 'tree')}x and {vs(again1, 'tree')}x `ar` at batch 1 in the two runs, `chain` "
               f"{vs(b1, 'chain')}x and {vs(again1, 'chain')}x; `tree` is "
               f"{ratio(b1['tree']['overall']['tokens_per_s'], b1['hf-generate']['overall']['tokens_per_s'])}x "
               f"transformers' float32 `generate`"),
        Phrase(f"({vs(b8, 'tree')}x and {vs(b8, 'chain')}x; {vs(again8, 'tree')}x and {vs(again8, 'chain')}x in the "
               f"repeat"),
        Phrase(f"At batch 8 the default is {min(vs(again8, 'tree'), vs(b8, 'tree'))}x to "
               f"{max(vs(again8, 'tree'), vs(b8, 'tree'))}x `ar`")]


WIDE_TILE_RUNS = ("issue17-wide-tiles-b1", "issue17-wide-tiles-b8")


@claim
def wide_tiles_table():
    """'Two more costs of a wide verify' table and bullets: issue17-wide-tiles-b1.json and -b8.json, against the
    threaded kernel's first runs (issue17-threaded-kernel-b1.json)."""
    b1, b8 = (result(n)["methods"] for n in WIDE_TILE_RUNS)
    before = result(THREADED_RUNS[0])
    curve = result(WIDE_TILE_RUNS[0])["step_cost"]
    assert curve == result(WIDE_TILE_RUNS[1])["step_cost"]
    tree = b1["tree"]["overall"]
    spread = lambda methods: max(methods[m]["overall"]["tokens_per_s"] for m in ("chain", "tree", "ngram")) / min(  # noqa: E731
        methods[m]["overall"]["tokens_per_s"] for m in ("chain", "tree", "ngram"))
    assert spread(b1) < 1.03 and spread(b8) < 1.03  # "within 3% of each other"
    ngram = ", ".join(f"{num(b1['ngram']['categories'][c]['speedup_vs_ar'], 2)}x on {c}" for c in NGRAM_CATEGORIES)
    assert all(b1["ngram"]["categories"][c]["speedup_vs_ar"] >= 1.5 for c in NGRAM_CATEGORIES)
    return budget_table(WIDE_TILE_RUNS) + [
        Phrase(f"The default `tree` is {num(tree['speedup_vs_ar'], 2)}x `ar` and "
               f"{ratio(tree['tokens_per_s'], b1['hf-generate']['overall']['tokens_per_s'])}x transformers' float32 "
               f"`generate` at batch 1, {num(b8['tree']['overall']['speedup_vs_ar'], 2)}x `ar` at batch 8"),
        Phrase(f"16 tokens at {num(curve['16'], 2)} forwards ({num(before['step_cost']['16'], 2)} in the threaded "
               f"kernel's runs)"),
        Phrase(f"({tree['unverified']} nodes cut against {before['methods']['tree']['overall']['unverified']}), tau "
               f"{num(tree['tau'], 2)} against {num(before['methods']['tree']['overall']['tau'], 2)}"),
        Phrase(ngram)]


AMX_RUNS = ("issue17-amx-b1", "issue17-amx-b8")


@claim
def amx_table():
    """'Another CPU (AMX)' table and bullets: issue17-amx-b1.json and -b8.json, against the AMD CPU's run
    (issue17-wide-tiles-b1.json)."""
    b1, b8 = (result(n)["methods"] for n in AMX_RUNS)
    assert all(o["overall"]["equal_to_ar"] == o["overall"]["prompts"] for run in (b1, b8)
               for m, o in run.items() if m != "hf-generate")
    hf, ar, tree = (b1[m]["overall"]["tokens_per_s"] for m in ("hf-generate", "ar", "tree"))
    assert hf > ar
    amd = result(WIDE_TILE_RUNS[0])["methods"]
    ngram = ", ".join(f"{num(b1['ngram']['categories'][c]['speedup_vs_ar'], 2)}x on {c}" for c in NGRAM_CATEGORIES)
    return budget_table(AMX_RUNS) + [
        Phrase(f"`tree` is {num(b1['tree']['overall']['speedup_vs_ar'], 2)}x `ar` at batch 1, the best batch-1 ratio "
               f"so far, and {num(b8['tree']['overall']['speedup_vs_ar'], 2)}x at batch 8"),
        Phrase(f"float32 `generate` ({num(hf, 2)} tok/s) is faster than the engine's exact bf16 `ar` ({num(ar, 2)}), "
               f"so `tree` is only {ratio(tree, hf)}x it "
               f"({ratio(amd['tree']['overall']['tokens_per_s'], amd['hf-generate']['overall']['tokens_per_s'])}x "
               f"on the AMD CPU)"),
        Phrase(ngram)]


SAMPLED_RUN = "issue17-sampled-b1"


@claim
def sampled_run():
    """The sampled bullet of 'The kernel on every thread; `tree` the default': issue17-sampled-b1.json."""
    run = result(SAMPLED_RUN)
    assert run["temperature"] == 0.8 and run["hf_dtype"] == "float32" and run["interleaved"]
    methods = {m: v["overall"] for m, v in run["methods"].items()}
    assert all("equal_to_ar" not in o for o in methods.values())  # sampled: no token-for-token claim
    return [Phrase(f"{run['prompts']} prompts, {run_setting(run)}): `tree` {num(methods['tree']['speedup_vs_ar'], 2)}x "
                   f"`ar` (tau {num(methods['tree']['tau'], 2)}), `chain` {num(methods['chain']['speedup_vs_ar'], 2)}x "
                   f"(tau {num(methods['chain']['tau'], 2)}); `tree` "
                   f"{ratio(methods['tree']['tokens_per_s'], methods['hf-generate']['tokens_per_s'])}x transformers' "
                   f"float32 `generate`"),
            Phrase(f"--name {SAMPLED_RUN}`")]


C_KERNEL_VARIANTS = "issue17-c-kernel-variants"


@claim
def c_kernel_variants_table():
    """'On a CPU with native bf16': fast against exact bf16 with the C kernel, issue17-c-kernel-variants.json."""
    run = result(C_KERNEL_VARIANTS)
    spec = next(iter(run["variants"].values()))["spec"]
    rows = [Row(cells(VARIANT_LABELS[r["variant"]], exact_method_label(r["method"], spec), num(r["tokens_per_s"], 2),
                      num(r["vs_first_ar"], 2) + "x", num(r["tau"], 2), equal_count(r))) for r in run["summary"]]
    costs = {variant: v["verify_cost"] for variant, v in run["variants"].items()}
    rows += [Row(cells(VARIANT_LABELS[variant], *(num(ms, 1) for ms in c["ms"].values()), num(c["ratio"]["8"], 2) + "x"))
             for variant, c in costs.items()]
    by = {(r["variant"], r["method"]): r for r in run["summary"]}
    fast, exact = "bfloat16:fast", "bfloat16:exact"
    assert run["variants"][exact]["exact_attention"] == "C kernel"
    return rows + [
        Phrase(f"a decode step of the exact bf16 target cost {num(costs[exact]['ms']['1'], 1)} ms against the fast "
               f"one's {num(costs[fast]['ms']['1'], 1)}, an 8-token verify {num(costs[exact]['ratio']['8'], 2)}x its "
               f"decode step (fast: {num(costs[fast]['ratio']['8'], 2)}x"),
        Phrase(f"ran at {ratio(by[exact, 'chain']['tokens_per_s'], by[fast, 'chain']['tokens_per_s'])}x and "
               f"{ratio(by[exact, 'tree']['tokens_per_s'], by[fast, 'tree']['tokens_per_s'])}x of the fast engine's, "
               f"which gives `ar`'s tokens on {by[fast, 'chain']['equal_to_ar']} and {by[fast, 'tree']['equal_to_ar']}"
               f" of {by[fast, 'chain']['prompts']} prompts"),
        Phrase(f"`ar` at {ratio(by[exact, 'ar']['tokens_per_s'], by[fast, 'ar']['tokens_per_s'])}x of the fast bf16 "
               f"`ar`, `chain` at {ratio(by[exact, 'chain']['tokens_per_s'], by[fast, 'chain']['tokens_per_s'])}x "
               f"of the fast bf16 `chain` (which gives `ar`'s tokens on {by[fast, 'chain']['equal_to_ar']} of "
               f"{by[fast, 'chain']['prompts']} prompts only)"),
        Phrase(f"--name {C_KERNEL_VARIANTS}`")]


# ---------------------------------------------------------------------------------------------------------------
# The checker


def nearest(expected, readme: str) -> str:
    """The README text that best lines up with what was expected: the closest line for a row, the same-length
    stretch around the longest common run for a phrase."""
    if isinstance(expected, Row):
        lines = [line for line in readme.splitlines() if line.startswith("|")]
        return (difflib.get_close_matches(expected.text, lines, n=1, cutoff=0) or [""])[0]
    flat = " ".join(readme.split())
    match = difflib.SequenceMatcher(None, flat, expected.text, autojunk=False).find_longest_match(
        0, len(flat), 0, len(expected.text))
    start = max(0, match.a - match.b)
    return flat[start:start + len(expected.text)]


def check(readme: str, names=None) -> list[str]:
    """One message per README text that the files do not bear out: the claim, the expected and the found text."""
    lines = {line.rstrip() for line in readme.splitlines()}
    flat = " ".join(readme.split())
    failures = []
    for name in names or CLAIMS:
        for expected in CLAIMS[name]():
            found = expected.text in lines if isinstance(expected, Row) else expected.text in flat
            if not found:
                failures.append(f"{name} ({' '.join(CLAIMS[name].__doc__.split())}):\n"
                                f"  expected: {expected.text}\n  README:   {nearest(expected, readme)}")
    return failures


def readme_text() -> str:
    return (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", list(CLAIMS))
def test_readme_figures_match_their_files(name):
    failures = check(readme_text(), [name])
    assert not failures, "\n".join(failures)


def test_every_claim_checks_something():
    counts = {name: len(fn()) for name, fn in CLAIMS.items()}
    assert all(counts.values()), counts
    assert sum(counts.values()) >= 80


def test_one_altered_digit_in_a_table_fails_naming_the_claim():
    readme = readme_text()
    good, bad = "| `ar` | 1.00 | 10.57 | 1.00x | |", "| `ar` | 1.00 | 10.58 | 1.00x | |"
    assert readme.count(good) == 1
    failures = check(readme.replace(good, bad))
    assert len(failures) == 1, failures
    assert failures[0].startswith("feature_drafter_table")
    assert f"expected: {good}" in failures[0] and f"README:   {bad}" in failures[0]


def test_one_altered_digit_in_a_sentence_fails_naming_the_claim():
    readme = readme_text()
    good = "run C at batch 4, with `ar`, `chain` and `mirror`"
    assert readme.count(good) == 1
    failures = check(readme.replace(good, good.replace("batch 4", "batch 8")))
    assert len(failures) == 1 and failures[0].startswith("mirror_runs_table"), failures
    assert "batch 8" in failures[0].split("README:")[1]


def test_the_reviewers_four_findings_fail():
    """The README's old text for the four figures a reviewer found wrong, put back: each fails its claim."""
    readme = readme_text()
    old = {
        "round trip is 0.67-0.76 ms (`channel_round_trip_ms`).": "round trip is 0.67-0.70 ms.",
        "73-90% of windows miss the precomputed branches (1 - windows reused)":
            "60-75% of steps miss the precomputed branches",
        "prompts in every run (runs A and B at batch 1; run C at batch 4, with `ar`, `chain` and `mirror`\nonly))":
            "prompts, at batch 1 and at batch 4)",
        "token for token on 2 prompts": "token for token on 10 prompts",
    }
    for new, wrong in old.items():
        assert readme.count(new) == 1, new
        readme = readme.replace(new, wrong)
    failures = check(readme)
    assert len(failures) == 4, "\n".join(failures)
    for claim_name, wrong in [("mirror_channel_prose", "0.67-0.70"), ("mirror_channel_prose", "60-75%"),
                              ("mirror_runs_table", "at batch 1 and at batch 4"),
                              ("tensor_parallel_table", "10 prompts")]:
        assert any(f.startswith(claim_name) and wrong in f.split("README:")[1] for f in failures), (wrong, failures)
