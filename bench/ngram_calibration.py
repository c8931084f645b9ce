"""How well the estimates of `ngram`'s nodes predict their acceptance, for the sequence's own repeats and for the
corpus (orchestration/ngram_corpus.py), on held-out answers of the target; no model runs.

Greedy answers in a train-drafter data folder are their own ground truth: at each step the drafts of the
committed prefix are built (own text, corpus), every node whose parent lies on the answer is scored (was its
token the answer's next one?), and the prefix advances by what the merged draft would have accepted, as decoding
does. The corpus is every other answer of the given folders, so no held-out answer is in it. Binned estimate
against accepted share is the calibration that CONFIDENCE_EXPONENT was fitted from.

    python -m mirrorspec.bench.ngram_calibration --data training/distill-data/SmolLM2-135M-Instruct \\
        --data training/distill-data/SmolLM2-135M-Instruct-magpie --held-out-from 1 --name ngram-corpus-calibration
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.orchestration.ngram_corpus import CONFIDENCE_EXPONENT, CorpusIndex
from mirrorspec.orchestration.ngram_draft import NgramIndex, continuation_tree
from mirrorspec.training import data


def score(tree: DraftTree, answer: list[int], bins: list[list[float]]) -> None:
    """Add each reachable node (its parent on the answer) to bins[int(estimate * 10)] as [nodes, sum of
    estimates, accepted]."""
    on_answer = {ROOT: True}
    depth = {ROOT: -1}
    for node, (parent, token, logprob) in enumerate(zip(tree.parents, tree.tokens, tree.logprobs)):
        depth[node] = depth[parent] + 1
        on_answer[node] = False
        if on_answer[parent] and depth[node] < len(answer):
            estimate = math.exp(logprob)
            on_answer[node] = answer[depth[node]] == token
            row = bins[min(9, int(estimate * 10))]
            row[0] += 1
            row[1] += estimate
            row[2] += on_answer[node]


def accepted(tree: DraftTree, answer: list[int]) -> int:
    child = {(parent, token): node for node, (parent, token) in enumerate(zip(tree.parents, tree.tokens))}
    node, count = ROOT, 0
    for token in answer:
        if (node, token) not in child:
            break
        node, count = child[node, token], count + 1
    return count


def calibrate(held_out: list[dict], corpus: CorpusIndex, depth: int, topk: int, budget: int) -> dict:
    bins = {"own": [[0, 0.0, 0] for _ in range(10)], "corpus": [[0, 0.0, 0] for _ in range(10)],
            "corpus_undiscounted": [[0, 0.0, 0] for _ in range(10)]}
    tokens = steps = 0
    for row in held_out:
        index = NgramIndex()
        index.extend(row["prompt_ids"])
        answer, done = row["answer_ids"], 0
        while done < len(answer):
            rest = answer[done:]
            score(continuation_tree(index.continuations(depth), depth, topk, budget), rest, bins["own"])
            score(corpus.draft(index.tokens, depth, topk, budget), rest, bins["corpus"])
            score(continuation_tree(corpus.continuations(index.tokens, depth), depth, topk, budget), rest,
                  bins["corpus_undiscounted"])
            step = 1 + min(accepted(index.draft(depth, topk, budget, corpus), rest), len(rest) - 1)
            index.extend(rest[:step])
            done += step
            steps += 1
        tokens += len(answer)
    table = {name: [{"estimate": f"{b / 10:.1f}-{(b + 1) / 10:.1f}", "nodes": n, "mean_estimate": s / n,
                     "accepted": a / n} for b, (n, s, a) in enumerate(rows) if n]
             for name, rows in bins.items()}
    totals = {name: {"predicted": sum(r[1] for r in rows), "accepted": sum(r[2] for r in rows)}
              for name, rows in bins.items()}
    return {"bins": table, "totals": totals, "tau_own_and_corpus": tokens / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", required=True, help="train-drafter data folder (repeatable)")
    p.add_argument("--held-out-from", type=int, default=0, help="which --data folder the held-out answers come from")
    p.add_argument("--every", type=int, default=20, help="hold out every k-th answer of that folder")
    p.add_argument("--held-out", type=int, default=200, help="held-out answers scored")
    p.add_argument("--shape", default="5,4,24", help="depth,topk,nodes of the drafts (SpecParams' tree defaults)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", required=True)
    args = p.parse_args()
    folders = [data.read_responses(Path(d)) for d in args.data]
    source = folders[args.held_out_from]
    held_out = source[:: args.every][: args.held_out]
    kept = [r for i, rows in enumerate(folders) for j, r in enumerate(rows)
            if i != args.held_out_from or j % args.every]
    corpus = CorpusIndex([r["answer_ids"] for r in kept])
    depth, topk, budget = (int(x) for x in args.shape.split(","))
    result = {"command": "python -m mirrorspec.bench.ngram_calibration " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, vs in vars(args).items()
                  for v in (vs if isinstance(vs, list) else [vs])),
              "held_out": len(held_out), "corpus_tokens": len(corpus), "confidence_exponent": CONFIDENCE_EXPONENT,
              **calibrate(held_out, corpus, depth, topk, budget)}
    path = Path(args.out) / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=1))
    for name, rows in result["bins"].items():
        print(name, {r["estimate"]: f"{r['mean_estimate']:.2f} -> {r['accepted']:.2f}" for r in rows},
              result["totals"][name])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
