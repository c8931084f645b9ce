"""`mirrorspec train-dllm`: a small masked-diffusion LM trained from scratch on the synthetic tasks, with the
target's tokenizer, so that diffusion decoding is real on this machine.

The model is a Llama architecture run with bidirectional attention over a reduced vocabulary (the tokens the
tasks use, EOS and the mask token). Training is LLaDA's (arXiv 2502.09992, Eq. 3): draw t ~ U(0.05, 1) per
example, mask each answer position (the EOS padding after the answer included, so the model learns where answers
end) with probability t, predict the masked tokens, weight the cross-entropy by 1/t. Examples are drawn fresh each
step; the held-out evaluation prompts are never trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch
import transformers

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.diffusion import DiffusionDecoder
from mirrorspec.params import DiffusionParams
from mirrorspec.training.dllm_drafter import add_adapt_args, cmd_adapt_drafter
from mirrorspec.training.synthetic_tasks import TASKS, Example, examples, make_example
from mirrorspec.workers.diffusion_model import DiffusionLM, DllmMeta, bidirectional_logits, save_dllm
from mirrorspec.workers.models import load_tokenizer, resolve_model_dir

logger = logging.getLogger(__name__)

ARCH = dict(num_hidden_layers=4, hidden_size=192, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=512)
MASK_TOKEN = "<empty_output>"  # a SmolLM2 special token no prompt uses
HELD_OUT_SEED, HELD_OUT = 12345, 400
TASK_DEFAULTS = {"steps": 4000, "batch": 128, "lr": 2e-3}
ADAPT_DEFAULTS = {"steps": 600, "batch": 8, "lr": 5e-4}


def add_train_dllm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--tokenizer", default="default", help="model folder whose tokenizer the dLLM speaks")
    p.add_argument("--gen-length", type=int, default=16, help="answer canvas (answer + EOS padding)")
    p.add_argument("--steps", type=int, help=f"default: {TASK_DEFAULTS['steps']} (tasks), "
                                             f"{ADAPT_DEFAULTS['steps']} (--from-drafter)")
    p.add_argument("--batch", type=int, help=f"default: {TASK_DEFAULTS['batch']} examples (tasks), "
                                             f"{ADAPT_DEFAULTS['batch']} answers (--from-drafter)")
    p.add_argument("--lr", type=float, help=f"default: {TASK_DEFAULTS['lr']} (tasks), {ADAPT_DEFAULTS['lr']} "
                                            f"(--from-drafter)")
    p.add_argument("--minutes", type=float, default=0, help="stop after this long (0: run all steps)")
    p.add_argument("--eval-every", type=int, default=500, help="steps between held-out evaluations")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data and masking")
    add_adapt_args(p)


class TaskCodec:
    """Examples as token ids: prompt ids, and the answer padded with EOS to the canvas length."""

    def __init__(self, tokenizer, gen_length: int) -> None:
        self.tokenizer = tokenizer
        self.gen_length = gen_length
        self.eos = tokenizer.eos_token_id
        self.mask = tokenizer.convert_tokens_to_ids(MASK_TOKEN)

    def prompt(self, ex: Example) -> list[int]:
        return self.tokenizer.encode(ex.prompt)

    def answer(self, ex: Example) -> list[int]:
        ids = self.tokenizer.encode(ex.answer) + [self.eos]
        if len(ids) > self.gen_length:
            raise InvalidRequestError("gen_length", f"{self.gen_length} is too short for {ex.answer!r}")
        return ids + [self.eos] * (self.gen_length - len(ids))

    def vocabulary(self) -> list[int]:
        """Every id the tasks can produce (a large sample covers them all: digits, spaces, the task words)."""
        ids = {self.eos, self.mask}
        for ex in examples(4000, seed=1):
            ids.update(self.prompt(ex))
            ids.update(self.answer(ex))
        return sorted(ids)


def cmd_train_dllm(args: argparse.Namespace) -> int:
    for key, value in (ADAPT_DEFAULTS if args.from_drafter else TASK_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.from_drafter:
        return cmd_adapt_drafter(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(resolve_model_dir(args.tokenizer, "tokenizer"))
    tokenizer.chat_template = None  # trained on raw task prompts: it ships no template, so prompts go in as is
    codec = TaskCodec(tokenizer, args.gen_length)
    vocab = codec.vocabulary()
    meta = DllmMeta(mask_token_id=codec.mask, vocab=vocab, target_vocab_size=len(tokenizer))
    config = transformers.LlamaConfig(vocab_size=len(vocab) + 1, max_position_embeddings=128, tie_word_embeddings=True,
                                      bos_token_id=None, eos_token_id=codec.eos, pad_token_id=None, **ARCH)
    model = transformers.LlamaForCausalLM(config)
    held_out = examples(HELD_OUT, HELD_OUT_SEED)
    history = train(model, codec, meta, held_out, args)
    save_dllm(model.eval(), meta, args.out, tokenizer)
    report = {"command": "mirrorspec train-dllm " + " ".join(sys.argv[2:]), "gen_length": args.gen_length,
              "arch": ARCH, "vocab": len(vocab),
              "parameters": sum(p.numel() for p in model.parameters()), "history": history,
              "held_out": f"{HELD_OUT} examples, seed {HELD_OUT_SEED}, never trained on"}
    (Path(args.out) / "training_report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(history[-1], indent=1))
    return 0


def train(model, codec: TaskCodec, meta: DllmMeta, held_out: list[Example], args) -> list[dict]:
    rows = {t: i for i, t in enumerate(meta.vocab)}
    mask_row = rows[meta.mask_token_id]
    excluded = {ex.prompt for ex in held_out}
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    started, history = time.monotonic(), []
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids, valid, answer = _batch(codec, rows, rng, args.batch, excluded)
        t = torch.rand(ids.shape[0], 1) * 0.95 + 0.05
        masked = answer & (torch.rand(ids.shape) < t)
        logits = bidirectional_logits(model.train(), torch.where(masked, mask_row, ids), valid)
        loss_each = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        loss = (loss_each * masked / t).sum() / answer.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        out_of_time = args.minutes and time.monotonic() - started > args.minutes * 60
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            scores = evaluate(DiffusionLM(model.eval(), meta, own=True), codec, held_out[:200],
                              DiffusionParams("low-confidence", gen_length=codec.gen_length,
                                              block_length=codec.gen_length))
            history.append({"step": step, "loss": round(loss.item(), 4),
                            "minutes": round((time.monotonic() - started) / 60, 1), "accuracy": scores["accuracy"],
                            "forwards_per_token": scores["forwards_per_token"]})
            logger.warning("step %d loss %.4f accuracy %s", step, loss.item(), scores["accuracy"])
        if out_of_time:
            break
    return history


def _batch(codec: TaskCodec, rows: dict[int, int], rng: random.Random, size: int, excluded: set[str]):
    """Left-padded model-row ids [B, L], real positions, and answer positions."""
    batch = []
    while len(batch) < size:
        ex = make_example(TASKS[len(batch) % len(TASKS)], rng)
        if ex.prompt not in excluded:
            batch.append((codec.prompt(ex), codec.answer(ex)))
    width = max(len(p) + len(a) for p, a in batch)
    ids = torch.zeros((size, width), dtype=torch.long)
    valid = torch.zeros((size, width), dtype=torch.bool)
    answer = torch.zeros((size, width), dtype=torch.bool)
    for k, (p, a) in enumerate(batch):
        seq = p + a
        ids[k, width - len(seq):] = torch.tensor([rows[t] for t in seq])
        valid[k, width - len(seq):] = True
        answer[k, width - len(a):] = True
    return ids, valid, answer


def evaluate(model: DiffusionLM, codec: TaskCodec, held_out: list[Example], params: DiffusionParams,
             batch_size: int | None = None) -> dict:
    """Exact-match accuracy per task and overall, and forwards per answer token, under one decoding setting
    (decoded `batch_size` examples at a time: all at once by default; outputs do not depend on it)."""
    decoder = DiffusionDecoder(model, eos_ids=(codec.eos,))
    prompts = [codec.prompt(ex) for ex in held_out]
    size = batch_size or len(prompts)
    outs = [o for i in range(0, len(prompts), size) for o in decoder.generate(prompts[i : i + size], params)]
    counts: dict[str, list[int]] = {}
    for ex, out in zip(held_out, outs):
        expected = codec.answer(ex)
        expected = expected[: expected.index(codec.eos) + 1]
        count = counts.setdefault(ex.task, [0, 0])
        count[0] += out.token_ids == expected
        count[1] += 1
    accuracy = {task: round(good / total, 4) for task, (good, total) in sorted(counts.items())}
    accuracy["overall"] = round(sum(g for g, _ in counts.values()) / len(held_out), 4)
    forwards, tokens = sum(o.forwards for o in outs), sum(len(o.token_ids) for o in outs)
    return {"accuracy": accuracy, "forwards_per_token": round(forwards / tokens, 3), "tokens": tokens,
            "outputs": [o.token_ids for o in outs]}
