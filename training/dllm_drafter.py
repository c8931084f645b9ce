"""`mirrorspec train-dllm --from-drafter DIR`: adapt an autoregressive drafter into a block-diffusion drafter.

Dream's recipe (arXiv 2508.15487): start from the AR model's weights and keep its shifted logits (the output at
position i predicts token i + 1), then train with masked diffusion. The data are the target's own answers with its
top-k next-token distributions (the drafter data folder of `train-drafter`), so the drafter learns the target.

Each training row is one answer sequence laid out as two streams, BD3-LM's vectorised block-diffusion training
(arXiv 2503.09573): the clean tokens, read causally (what the drafter has committed), then noisy copies of blocks
of `window` answer positions, each attending to the clean tokens before its block and to its own block. Block
starts are offset at random per row, so windows start anywhere in an answer. Half of the blocks are all masks
(what drafting sees); the others are masked at a rate t ~ U(0.1, 1) (the masked-diffusion objective). Losses, to
the target's top-k distribution at the predicted position: every clean answer position (the AR prediction of
draft position 1) and every noisy position whose next token is masked or lies past its block.
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
from mirrorspec.training import data
from mirrorspec.training.train_drafter import TOKENIZER_FILES
from mirrorspec.training.trainer import soft_targets
from mirrorspec.workers.diffusion_model import DiffusionLM, DllmMeta, save_dllm
from mirrorspec.workers.drafter_model import Drafter
from mirrorspec.workers.models import load_tokenizer

logger = logging.getLogger(__name__)

MASK_TOKEN = "<empty_output>"  # a SmolLM2 special token that no answer uses
EVAL_STRIDE = 33  # every 33rd example is held out, as train-drafter does with its default --eval-fraction


def add_adapt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("block-diffusion drafter (--from-drafter)")
    g.add_argument("--from-drafter", help="adapt this token drafter (train-drafter --kind token) into a "
                                          "block-diffusion drafter for diffusion-draft, instead of training on the "
                                          "synthetic tasks")
    g.add_argument("--data", help="the drafter data folder of train-drafter (default: <cache>/drafter-data/<target>)")
    g.add_argument("--window", type=int, default=8, help="draft positions predicted in one forward")
    g.add_argument("--examples", type=int, default=2000, help="answer sequences used (held-out split included)")
    g.add_argument("--max-len", type=int, default=320, help="longer sequences are cut")


def cmd_adapt_drafter(args: argparse.Namespace) -> int:
    from mirrorspec.workers.default_model import cache_dir
    from mirrorspec.workers.models import resolve_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.window < 2:
        raise InvalidRequestError("window", f"must be >= 2, got {args.window}")
    torch.manual_seed(args.seed)
    source = Drafter.load(args.from_drafter)
    if source.meta.kind != "token":
        raise InvalidRequestError("from_drafter", f"{args.from_drafter!r} is a {source.meta.kind} drafter; adapt a "
                                                  f"token drafter (it needs only token ids)")
    target_dir = resolve_model_dir(args.tokenizer, "tokenizer")
    tokenizer = load_tokenizer(Path(args.from_drafter))
    data_dir = Path(args.data) if args.data else cache_dir() / "drafter-data" / target_dir.name
    examples = data.load_shards(data_dir)[: args.examples]
    if not examples:
        raise InvalidRequestError("data", f"no labelled answers in {data_dir} (run train-drafter first)")
    eval_set = examples[::EVAL_STRIDE]
    train_set = [e for i, e in enumerate(examples) if i % EVAL_STRIDE]
    model = DiffusionLM(*adapt(source, tokenizer.convert_tokens_to_ids(MASK_TOKEN), args.window), own=True)
    history = train(model, train_set, eval_set, args)
    out = Path(args.out)
    save_dllm(model.model.eval(), model.meta, out)
    for name in TOKENIZER_FILES:
        if (Path(args.from_drafter) / name).exists():
            (out / name).write_bytes((Path(args.from_drafter) / name).read_bytes())
    report = {"command": "mirrorspec train-dllm " + " ".join(sys.argv[2:]), "from_drafter": args.from_drafter,
              "data": str(data_dir), "examples": {"train": len(train_set), "eval": len(eval_set)},
              "window": args.window, "parameters": sum(p.numel() for p in model.model.parameters()),
              "history": history}
    (out / "training_report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(history[-1], indent=1))
    return 0


def adapt(source: Drafter, mask_id: int, window: int) -> tuple[transformers.LlamaForCausalLM, DllmMeta]:
    """The token drafter's Llama with one more embedding row, the mask token's (started at the mean embedding).
    Rows: the draft vocabulary, then the mask, then the row shared by every other id (the drafter's OOV row)."""
    if mask_id in source.meta.draft_to_target:
        raise InvalidRequestError("from_drafter", f"the mask token {mask_id} is in the drafter's vocabulary")
    old = source.lm.get_input_embeddings().weight.data
    config = transformers.LlamaConfig(**{**source.lm.config.to_dict(), "vocab_size": old.shape[0] + 1})
    model = transformers.LlamaForCausalLM(config)
    state = {k: v for k, v in source.lm.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("embed_tokens" in k or "lm_head" in k for k in missing), (missing, unexpected)
    words = old[: len(source.meta.draft_to_target)]
    model.get_input_embeddings().weight.data.copy_(torch.cat([words, words.mean(0, keepdim=True), old[-1:]]))
    model.tie_weights()
    meta = DllmMeta(mask_token_id=mask_id, shifted=True, vocab=list(source.meta.draft_to_target) + [mask_id],
                    target_vocab_size=source.meta.target_vocab_size, draft_window=window)
    return model, meta


def block_batch(model: DiffusionLM, examples: list[data.Sequence], window: int, max_len: int,
                rng: random.Random, all_masked: float = 0.5) -> dict:
    """The two-stream layout of a batch (see the module docstring): model-row ids, positions, the attention mask
    [B, 1, L, L]; the loss rows ((batch row, layout index) and the target's top-k there); and `windows`: for each
    all-mask block, its loss rows in draft-depth order (the clean position before it, then its masks)."""
    mask_row = int(model.model_rows(torch.tensor(model.mask_id)))
    batch_ids, batch_positions, spans, losses, windows = [], [], [], [], []
    for b, e in enumerate(examples):
        n, p = min(len(e.ids), max_len), e.prompt_len
        ids = model.model_rows(e.ids[:n].long())
        layout, positions, blocks = [ids], [torch.arange(n)], []
        clean_loss = {}  # position -> loss row
        for i in range(p - 1, n - 1):  # clean answer positions: the AR prediction of the next token
            clean_loss[i] = len(losses)
            losses.append((b, i, e, i - p + 1))
        cursor = n
        for start in range(p + rng.randrange(window), n - 1, window):
            end = min(start + window, n - 1)  # every output of the block has a next token to learn
            rate = 1.0 if rng.random() < all_masked else rng.uniform(0.1, 1.0)
            masked = torch.tensor([rng.random() < rate for _ in range(end - start)])
            masked[0] = True  # the block's first token is what the clean stream predicts: always hidden
            layout.append(torch.where(masked, mask_row, ids[start:end]))
            positions.append(torch.arange(start, end))
            blocks.append((cursor, end - start, start))
            rows = [clean_loss[start - 1]]
            for k in range(end - start):
                if start + k + 1 >= end or bool(masked[k + 1]):
                    rows.append(len(losses))
                    losses.append((b, cursor + k, e, start + k - p + 1))
            if bool(masked.all()):
                windows.append(rows)
            cursor += end - start
        batch_ids.append(torch.cat(layout))
        batch_positions.append(torch.cat(positions))
        spans.append((n, blocks))
    width = max(len(x) for x in batch_ids)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    positions = torch.zeros((len(examples), width), dtype=torch.long)
    see = torch.eye(width, dtype=torch.bool).repeat(len(examples), 1, 1)  # padding sees itself only
    for b, (row_ids, row_positions, (n, blocks)) in enumerate(zip(batch_ids, batch_positions, spans)):
        ids[b, : len(row_ids)], positions[b, : len(row_positions)] = row_ids, row_positions
        see[b, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        for first, length, clean in blocks:
            see[b, first:first + length, :clean] = True
            see[b, first:first + length, first:first + length] = True
    return {"ids": ids, "positions": positions, "mask": see[:, None],
            "where": torch.tensor([(b, index) for b, index, _, _ in losses]),
            "teacher_ids": torch.stack([e.top_ids[t].long() for _, _, e, t in losses]),
            "teacher_logp": torch.stack([e.top_logp[t].float() for _, _, e, t in losses]),
            "windows": windows}


def batch_loss(model: DiffusionLM, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean soft cross-entropy, top-1 agreement with the target of each loss row)."""
    logits = model.model(input_ids=batch["ids"], attention_mask=batch["mask"],
                         position_ids=batch["positions"]).logits
    chosen = logits[batch["where"][:, 0], batch["where"][:, 1], : len(model.meta.vocab)].float()
    logp = torch.log_softmax(chosen, dim=-1)
    other = len(model.meta.vocab)
    index, weights = soft_targets(model.token_rows, other, batch["teacher_ids"], batch["teacher_logp"])
    loss = -(weights * logp.gather(-1, index)).sum(-1).mean()
    agree = logp.argmax(-1) == model.token_rows[batch["teacher_ids"][:, 0]]
    return loss, agree


def train(model: DiffusionLM, train_set: list[data.Sequence], eval_set: list[data.Sequence], args) -> list[dict]:
    rng = random.Random(args.seed)
    params = list(model.model.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    started, history = time.monotonic(), []
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = block_batch(model, rng.sample(train_set, args.batch), args.window, args.max_len, rng)
        model.model.train()
        loss, _ = batch_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        out_of_time = args.minutes and time.monotonic() - started > args.minutes * 60
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            history.append({"step": step, "loss": round(loss.item(), 4),
                            "minutes": round((time.monotonic() - started) / 60, 1),
                            **evaluate(model, eval_set, args)})
            logger.warning("step %d %s", step, history[-1])
        if out_of_time:
            break
    return history


@torch.no_grad()
def evaluate(model: DiffusionLM, eval_set: list[data.Sequence], args) -> dict:
    """With all-mask windows, as drafting sees them: the top-1 agreement with the target at each draft depth,
    and the mean length of a window's agreeing prefix (what a greedy chain of `window` drafts would keep)."""
    model.model.eval()
    rng = random.Random(0)
    by_depth: dict[int, list[bool]] = {}
    prefixes = []
    for start in range(0, len(eval_set), args.batch):
        batch = block_batch(model, eval_set[start:start + args.batch], args.window, args.max_len, rng, all_masked=1.0)
        _, agree = batch_loss(model, batch)
        for rows in batch["windows"]:
            oks = agree[torch.tensor(rows)].tolist()
            for depth, ok in enumerate(oks, start=1):
                by_depth.setdefault(depth, []).append(ok)
            prefixes.append(next((d for d, ok in enumerate(oks) if not ok), len(oks)))
    return {"eval_top1_by_depth": {d: round(sum(v) / len(v), 4) for d, v in sorted(by_depth.items())},
            "eval_agreeing_prefix": round(sum(prefixes) / max(1, len(prefixes)), 3)}
