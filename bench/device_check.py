"""The exact path on a lent accelerator (issue 16), as one script: `python bench/device_check.py --device cuda`.

Needs only what a lent GPU machine has (torch, transformers): run from a checkout, not installed. The embedded
SmolLM2 weights do not travel to the device (270 MB in bf16), so the target is SmolLM2-135M's architecture with
seeded random weights (its config ships below): random weights make near-ties common, a harder test of bitwise
identity than a trained model, and they cost the same per forward. Checks, in bf16 unless --dtype says otherwise:
  1. decode vs chain-verify vs tree-verify vs batched logits: torch.equal, exact path on and off;
  2. greedy outputs of chain (the target drafting for itself, exact) equal to ar, on the bench prompts;
  3. ms per token of ar and chain, exact and not, and the verify cost curve of each path.
Prints a JSON report (also written to --out). Budget: well under 8 minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("protos", "workers", "orchestration", "bench")
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True)


def _import_checkout() -> None:
    """Map the checkout's layer folders to mirrorspec.* as pyproject.toml's package-dir does (no install)."""
    sys.path.insert(0, str(ROOT))
    import mirrorspec

    for layer in LAYERS:
        spec = importlib.util.spec_from_file_location(f"mirrorspec.{layer}", ROOT / layer / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / layer)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        setattr(mirrorspec, layer, module)
        spec.loader.exec_module(module)


def random_target(dtype, device, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mirrorspec.workers.models import LoadedModel

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M, attn_implementation="sdpa"))
    return LoadedModel(path="smollm2-135m-shaped, random", model=model.to(device=device, dtype=dtype).eval(),
                       tokenizer=None)


def bitwise_checks(loaded, exact: bool) -> dict[str, bool]:
    """Logits of the same tokens decoded alone, in a batch of three, verified as chains and as a tree path."""
    from mirrorspec.bench.exactness import Probe, same_bits
    from mirrorspec.workers.model_worker import ModelWorker

    vocab = SMOLLM2_135M["vocab_size"]
    probe = Probe([[(7 * s + 13 * i) % vocab for i in range(40 + 9 * s)] for s in range(3)],
                  [[(11 * s + 17 * i) % vocab for i in range(9)] for s in range(3)], vocab)
    return same_bits(ModelWorker(loaded, max_slots=3, capacity=512, max_spec_nodes=32, exact=exact), probe)


def generation(loaded, exact: bool, prompts: list[list[int]], max_new: int, device) -> dict:
    """ar and chain (the target drafting for itself) on the same prompts: ms per token and equality."""
    import torch

    from mirrorspec.orchestration.engine import Engine
    from mirrorspec.params import SamplingParams, SpecParams
    from mirrorspec.workers.model_worker import ModelWorker

    def engine(with_drafter: bool) -> Engine:
        target = ModelWorker(loaded, max_slots=1, capacity=1024, max_spec_nodes=16, exact=exact)
        drafter = ModelWorker(loaded, max_slots=1, capacity=1024, max_spec_nodes=16) if with_drafter else None
        return Engine(target, drafter, max_model_len=1000, max_batch=1, max_spec_nodes=16)

    sampling = SamplingParams(max_new_tokens=max_new, ignore_eos=True)
    out = {}
    for label, spec in (("ar", SpecParams("ar")), ("chain", SpecParams("chain", gamma=4))):
        eng = engine(label != "ar")
        eng.generate(prompts[:1], SamplingParams(max_new_tokens=4, ignore_eos=True), spec)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        outs = [eng.generate([p], sampling, spec)[0] for p in prompts]
        seconds = time.perf_counter() - start
        out[label] = {"ids": [o.token_ids for o in outs],
                      "ms_per_token": round(seconds / sum(len(o.token_ids) for o in outs) * 1000, 3)}
    out["chain_equal_to_ar"] = sum(a == b for a, b in zip(out["chain"]["ids"], out["ar"]["ids"]))
    for label in ("ar", "chain"):
        del out[label]["ids"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompts", type=int, default=10,
                        help="bench prompts, the first of each category (token ids of the prompt's bytes)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default="device_check.json")
    args = parser.parse_args()
    _import_checkout()
    import torch

    from mirrorspec.bench.harness import load_prompts
    from mirrorspec.bench.verify_cost import verify_cost_curve
    from mirrorspec.workers.model_worker import ModelWorker
    from mirrorspec.workers.models import parse_device, parse_dtype

    device, dtype = parse_device(args.device), parse_dtype(args.dtype, device=args.device)
    rows = load_prompts(None, per_category=1)[:args.prompts]  # one per category
    # No tokenizer travels either: a prompt's UTF-8 bytes, offset past the special tokens, are its token ids.
    prompts = [[b + 3 for b in row["prompt"].encode()][:200] for row in rows]
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": str(dtype), "prompts": len(prompts),
              "max_new_tokens": args.max_new_tokens}
    for exact in (True, False):
        loaded = random_target(dtype, device)
        path = "exact" if exact else "fast"
        report[path] = {"bitwise": bitwise_checks(loaded, exact),
                        "generation": generation(loaded, exact, prompts, args.max_new_tokens, device),
                        "verify_cost": verify_cost_curve(ModelWorker(loaded, max_slots=1, capacity=512,
                                                                     max_spec_nodes=40, exact=exact))}
        print(json.dumps({path: report[path]}), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    exact_ok = all(report["exact"]["bitwise"].values()) and \
        report["exact"]["generation"]["chain_equal_to_ar"] == len(prompts)
    print(f"exact path bitwise identical: {exact_ok}", flush=True)
    return 0 if exact_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
