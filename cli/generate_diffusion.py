"""`mirrorspec generate --method diffusion`: decode with a masked-diffusion LM (see orchestration/diffusion.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.diffusion import DiffusionDecoder
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.prompts import encode_prompt
from mirrorspec.orchestration.stats import RequestStats
from mirrorspec.params import CACHES, STRATEGIES, DiffusionParams
from mirrorspec.workers.diffusion_gemma import is_diffusion_gemma
from mirrorspec.workers.models import resolve_model_dir

DIFFUSION = "diffusion"


def add_diffusion_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("diffusion decoding (--method diffusion; --target: a masked-diffusion model folder)")
    defaults = DiffusionParams()
    g.add_argument("--strategy", default=defaults.strategy, help=" | ".join(STRATEGIES))
    g.add_argument("--block-length", type=int, help=f"tokens per semi-autoregressive block (must divide "
                                                    f"--max-new-tokens; default: {defaults.block_length} or fewer)")
    g.add_argument("--steps", type=int, help="low-confidence / random: denoising steps in all (default: one "
                                             "token per step)")
    g.add_argument("--threshold", type=float, default=defaults.threshold, help="threshold: commit every token "
                                                                               "at least this confident")
    g.add_argument("--factor", type=float, default=defaults.factor, help="factor: Fast-dLLM's factor rule")
    g.add_argument("--adaptive-blocks", action="store_true", help="AdaBlock: end blocks at confident newlines")
    g.add_argument("--early-commit", action="store_true", help="Prophet: commit a block at once when the "
                                                               "top-2 logit gap is wide")
    g.add_argument("--cache", default=defaults.cache, help=f"{' | '.join(CACHES)}: Fast-dLLM's approximate KV "
                                                           f"caches (reuse the K/V of the prefix, or of prefix "
                                                           f"and suffix, within a block)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow a LLaDA / Dream folder to run its own modelling code")


def params_from_args(args: argparse.Namespace, default_block: int | None = None) -> DiffusionParams:
    block = args.block_length or default_block or min(DiffusionParams.block_length, args.max_new_tokens)
    return DiffusionParams(strategy=args.strategy, gen_length=args.max_new_tokens, block_length=block,
                           steps=args.steps, threshold=args.threshold, factor=args.factor,
                           temperature=args.temperature, adaptive_blocks=args.adaptive_blocks,
                           early_commit=args.early_commit, cache=args.cache,
                           seed=args.seed or 0).validate()


def cmd_generate_diffusion(args: argparse.Namespace, engine: EngineConfig) -> int:
    from mirrorspec.orchestration.factory import eos_token_ids
    from mirrorspec.workers.diffusion_model import load_dllm

    if args.prompt is None:
        raise InvalidRequestError("prompt", "--method diffusion takes one prompt (no --input yet)")
    folder = resolve_model_dir(engine.target, "target")
    if is_diffusion_gemma(folder):
        return _generate_diffusion_gemma(args, engine, folder)
    params = params_from_args(args)
    model = load_dllm(engine.target, dtype=engine.dtype, device=engine.device,
                      trust_remote_code=args.trust_remote_code)
    ids = encode_prompt(model.tokenizer, model.vocab_size, args.prompt, args.chat)
    _note_unknown_tokens(model, ids)
    newline = model.tokenizer.encode("\n", add_special_tokens=False) if model.tokenizer is not None else []
    decoder = DiffusionDecoder(model, eos_ids=tuple(eos_token_ids(model)), delimiter_ids=tuple(newline))
    if args.stream and not args.json:
        for block in decoder.stream(ids, params):
            sys.stdout.write(_text(model, block))
            sys.stdout.flush()
        print()
        return 0
    return _print(args, model, ids, decoder.generate([ids], params)[0])


def _note_unknown_tokens(model, ids: list[int]) -> None:
    """A model trained on a reduced vocabulary (this project's task dLLM knows its synthetic tasks' few tokens)
    reads any other token as one unknown row: say so rather than answer nonsense silently."""
    if not model.meta.vocab:
        return
    known = set(model.meta.vocab)
    unknown = sum(t not in known for t in ids)
    if unknown:
        print(f"note: {unknown} of the prompt's {len(ids)} tokens are outside this model's {len(known)}-token "
              f"vocabulary (what it was trained on); expect an answer that makes no sense", file=sys.stderr)


def _generate_diffusion_gemma(args: argparse.Namespace, engine: EngineConfig, folder) -> int:
    from mirrorspec.workers.diffusion_gemma import DiffusionGemmaLM
    from mirrorspec.workers.models import parse_dtype

    model = DiffusionGemmaLM(folder, dtype=parse_dtype(engine.dtype, device=engine.device), device=engine.device)
    params = params_from_args(args, default_block=model.canvas_length)
    ids = encode_prompt(model.tokenizer, model.vocab_size, args.prompt, args.chat)
    streaming = args.stream and not args.json
    on_block = (lambda block: (sys.stdout.write(_text(model, block)), sys.stdout.flush())) if streaming else None
    out = model.generate(ids, params, on_block=on_block)
    if streaming:
        print()
        return 0
    return _print(args, model, ids, out)


def _print(args: argparse.Namespace, model, prompt_ids: list[int], out) -> int:
    """The answer as the other methods print it: the text and a stats line, or `--json` with the same keys
    (`tau` here is tokens per forward; `blocks` the tokens of each block)."""
    finished = time.perf_counter()
    stats = RequestStats(prompt_tokens=len(prompt_ids), generated_tokens=len(out.token_ids),
                         target_forwards=out.forwards, arrival_time=finished - out.seconds, finish_time=finished)
    text = _text(model, out.token_ids)
    if not args.json:
        print(text)
        print(f"[{DIFFUSION}] {stats.summary()}, {len(out.blocks)} blocks", file=sys.stderr)
        return 0
    print(json.dumps({"method": DIFFUSION, "request_id": None, "text": text, "token_ids": out.token_ids,
                      "finish_reason": out.finish_reason, "error": None,
                      "stats": {**stats.as_dict(), "blocks": out.blocks}}, ensure_ascii=False))
    return 0


def _text(model, token_ids: list[int]) -> str:
    if model.tokenizer is None:
        return " ".join(map(str, token_ids))
    return model.tokenizer.decode(token_ids, skip_special_tokens=True)
