"""Training a drafter on self-distillation data: soft labels from the target, checkpoints, exact resume.

Loss: cross-entropy against the target's top-k next-token distribution (renormalised over the tokens the draft
vocabulary has). A feature drafter is also trained to predict the target's next hidden state (smooth L1, as
EAGLE does), and is trained for the depths it drafts at ("training-time test", EAGLE-3, arXiv 2503.01840):
pass k feeds, at every position, the drafter's own guess from pass k-1 instead of the target's hidden state, and
attends to the committed states of pass 1 plus its own chain of guesses, exactly the attention a depth-k tree
node sees at inference. Batches are a pure function of (seed, step), so a resumed run is the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mirrorspec.training.data import Sequence
from mirrorspec.workers.drafter_model import Drafter
from mirrorspec.workers.models import parse_dtype

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    steps: int = field(default=600, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step"})
    max_len: int = field(default=384, metadata={"help": "longer sequences are cut (the answer's tail is dropped)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (warm-up, then cosine to a tenth)"})
    warmup: int = field(default=40, metadata={"help": "warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    passes: int = field(default=3, metadata={"help": "feature drafters: draft depths trained per position"})
    regression_weight: float = field(default=0.5, metadata={"help": "feature drafters: weight of the loss on the "
                                                                    "target's next hidden state"})
    eval_every: int = field(default=100, metadata={"help": "steps between held-out evaluations"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints (a rerun resumes)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and batch order"})
    matmul_dtype: str = field(default="auto", metadata={"help": "dtype of the matrix products (weights, optimizer "
                                                                "and losses stay float32): auto is bfloat16 where "
                                                                "the CPU has native bf16"})


def _cosine(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Batch:
    ids: torch.Tensor  # [B, T]
    lengths: list[int]
    prompt_lens: list[int]
    features: torch.Tensor | None  # [B, T, H] float32
    teacher_ids: list[torch.Tensor]  # per row [answer positions, K] target token ids
    teacher_logp: list[torch.Tensor]


def make_batch(examples: list[Sequence], max_len: int, with_features: bool) -> Batch:
    lengths = [min(len(e.ids), max_len) for e in examples]
    width = max(lengths)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    feats = torch.zeros(len(examples), width, examples[0].features.shape[1]) if with_features else None
    t_ids, t_logp = [], []
    for i, (e, n) in enumerate(zip(examples, lengths)):
        ids[i, :n] = e.ids[:n]
        if feats is not None:
            feats[i, :n] = e.features[:n].float()
        answer = max(0, n - e.prompt_len)  # teacher rows for positions prompt_len-1 .. n-2
        t_ids.append(e.top_ids[:answer].long())
        t_logp.append(e.top_logp[:answer].float())
    return Batch(ids, lengths, [e.prompt_len for e in examples], feats, t_ids, t_logp)


def soft_targets(to_row: torch.Tensor, other_row: int, teacher_ids: torch.Tensor, teacher_logp: torch.Tensor):
    """Teacher top-k -> (model rows [N, K], weights [N, K]) renormalised over the tokens the model has a row for
    (`to_row`: target id -> row; `other_row`: the row of every other id, never a label)."""
    rows = to_row[teacher_ids]
    keep = rows != other_row
    probs = teacher_logp.exp() * keep
    weights = probs / probs.sum(-1, keepdim=True).clamp_min(1e-9)
    return rows.clamp_max(other_row - 1), weights


def _token_loss(drafter: Drafter, hidden: torch.Tensor, t_ids: torch.Tensor, t_logp: torch.Tensor):
    logp = torch.log_softmax(drafter.draft_logits(hidden).float(), dim=-1)
    idx, w = soft_targets(drafter.target_to_draft, drafter.meta.oov_index, t_ids, t_logp)
    loss = -(w * logp.gather(-1, idx)).sum(-1).mean()
    top1 = drafter.target_to_draft[t_ids[:, 0]]
    agree = (logp.argmax(-1) == top1).float().sum()
    return loss, agree


def token_drafter_loss(drafter: Drafter, batch: Batch) -> tuple[torch.Tensor, dict]:
    """Standalone drafter: position p reads x_p and predicts x_{p+1} (teacher row p - prompt_len + 1)."""
    ids = batch.ids
    attn = torch.zeros_like(ids)
    for i, n in enumerate(batch.lengths):
        attn[i, :n] = 1
    hidden = drafter.lm.model(inputs_embeds=drafter.input_embeds(ids, None), attention_mask=attn).last_hidden_state
    rows, t_ids, t_logp = [], [], []
    for i, (n, p) in enumerate(zip(batch.lengths, batch.prompt_lens)):
        m = batch.teacher_ids[i].shape[0]
        if m:
            rows.append(hidden[i, p - 1 : p - 1 + m])
            t_ids.append(batch.teacher_ids[i])
            t_logp.append(batch.teacher_logp[i])
    loss, agree = _token_loss(drafter, torch.cat(rows), torch.cat(t_ids), torch.cat(t_logp))
    return loss, {"loss": loss.item(), "top1": float(agree) / sum(x.shape[0] for x in t_ids)}


def multipass_mask(n: int, passes: int) -> torch.Tensor:
    """[passes*n, passes*n] bool: query (k, p) sees pass-1 keys p' <= p-k+1 and pass-k' keys at p-(k-k'), k' >= 2."""
    q_pass = torch.arange(passes).repeat_interleave(n)
    q_pos = torch.arange(n).repeat(passes)
    k_pass, k_pos = q_pass[None, :], q_pos[None, :]
    q_pass, q_pos = q_pass[:, None], q_pos[:, None]
    committed = (k_pass == 0) & (k_pos <= q_pos - q_pass)
    chain = (k_pass >= 1) & (k_pass <= q_pass) & (k_pos == q_pos - (q_pass - k_pass))
    return committed | chain


def feature_drafter_loss(drafter: Drafter, batch: Batch, passes: int, reg_weight: float) -> tuple[torch.Tensor, dict]:
    """Feature drafter: position p reads (f_p, x_{p+1}) and predicts f_{p+1} and x_{p+2}, at depths 1..passes."""
    tokens = batch.ids[:, 1:]  # x_{p+1}
    feats = batch.features[:, :-1]  # f_p (with a fused drafter's layer states before the final state)
    targets = batch.features[:, 1:, -drafter.meta.feature_size :]  # f_{p+1}, the final state
    b, n = tokens.shape
    lm = drafter.lm.model
    embeds = [drafter.input_embeds(tokens, feats)]
    guesses = None
    with torch.no_grad():  # the guesses each pass feeds forward (no gradient through them, for speed)
        for k in range(1, passes):
            mask = multipass_mask(n, k)
            hidden = lm(inputs_embeds=torch.cat(embeds, 1), attention_mask=_pad_mask(mask, batch.lengths, n, k),
                        position_ids=torch.arange(n).repeat(k)[None].expand(b, -1)).last_hidden_state
            last = hidden[:, (k - 1) * n :]
            # Pass k+1 at p uses pass k's guess from p-1 (position 0 keeps the target's state, fused).
            guesses = torch.cat([drafter.fused(feats[:, :1]), last[:, :-1]], dim=1)
            embeds.append(drafter.input_embeds(tokens, guesses))
    mask = multipass_mask(n, passes)
    hidden = lm(inputs_embeds=torch.cat(embeds, 1), attention_mask=_pad_mask(mask, batch.lengths, n, passes),
                position_ids=torch.arange(n).repeat(passes)[None].expand(b, -1)).last_hidden_state
    total = 0.0
    stats = {}
    for k in range(passes):
        rows, regs, t_ids, t_logp, tgt = [], [], [], [], []
        for i, (length, p) in enumerate(zip(batch.lengths, batch.prompt_lens)):
            m = batch.teacher_ids[i].shape[0]  # teacher rows j = p-1 .. p-2+m  <->  drafter positions j - 1
            if m == 0 or p < 2:
                continue
            sl = slice(k * n + p - 2, k * n + p - 2 + m)
            rows.append(hidden[i, sl])
            tgt.append(targets[i, p - 2 : p - 2 + m])
            t_ids.append(batch.teacher_ids[i])
            t_logp.append(batch.teacher_logp[i])
        h = torch.cat(rows)
        ce, agree = _token_loss(drafter, h, torch.cat(t_ids), torch.cat(t_logp))
        reg = F.smooth_l1_loss(h, torch.cat(tgt))
        weight = 1.0 / (k + 1)
        total = total + weight * (ce + reg_weight * reg)
        stats[f"top1_d{k + 1}"] = float(agree) / h.shape[0]
        stats[f"ce_d{k + 1}"] = ce.item()
    stats["loss"] = total.item()
    return total, stats


def _pad_mask(mask: torch.Tensor, lengths: list[int], n: int, passes: int) -> torch.Tensor:
    """Per row, hide keys past the row's length; returns an additive float mask [B, 1, Q, K]."""
    b = len(lengths)
    pos = torch.arange(n).repeat(passes)
    valid = torch.stack([pos < (length - 1) for length in lengths])  # [B, K]
    allowed = mask[None] & valid[:, None, :]
    allowed |= torch.eye(mask.shape[0], dtype=torch.bool)[None]  # padding queries see themselves (no NaN)
    out = torch.zeros(b, 1, *mask.shape)
    return out.masked_fill_(~allowed[:, None], torch.finfo(torch.float32).min)


def train(drafter: Drafter, train_set: list[Sequence], eval_set: list[Sequence], cfg: TrainConfig,
          out_dir: Path) -> dict:
    """Train (resuming from out_dir/checkpoint.pt if present); return the final metrics."""
    kind = drafter.meta.kind
    params = [p for p in drafter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    start, history = 0, []
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        drafter.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        logger.info("resuming from step %d", start)
    loss_fn = _loss_fn(drafter, cfg)
    drafter.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {kind} drafter", unit="step")
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        picks = torch.randint(len(train_set), (cfg.batch_size,), generator=g).tolist()
        batch = make_batch([train_set[i] for i in picks], cfg.max_len, kind == "feature")
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _cosine(step, cfg)
        loss, stats = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items() if k in ("loss", "top1", "top1_d1", "top1_d2")})
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            history.append({"step": done, "time": time.time(), "train": stats, "eval": evaluate(drafter, eval_set, cfg)})
            drafter.train()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save_checkpoint(ckpt, drafter, opt, done, history)
    drafter.eval()
    (out_dir / "train_history.json").write_text(json.dumps({"config": asdict(cfg), "history": history}, indent=1))
    return history[-1] if history else {}


@torch.no_grad()
def evaluate(drafter: Drafter, eval_set: list[Sequence], cfg: TrainConfig) -> dict:
    drafter.eval()
    totals: dict[str, float] = {}
    batches = [eval_set[i : i + cfg.batch_size] for i in range(0, len(eval_set), cfg.batch_size)]
    loss_fn = _loss_fn(drafter, cfg)
    for chunk in batches:
        batch = make_batch(chunk, cfg.max_len, drafter.meta.kind == "feature")
        _, stats = loss_fn(batch)
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v / len(batches)
    return totals


def _loss_fn(drafter: Drafter, cfg: TrainConfig):
    """batch -> (loss, stats) for the drafter's kind, its matrix products in cfg.matmul_dtype (on a CPU with
    native bf16, bf16 products made a feature-drafter step about 2x faster than fp32 ones)."""
    dtype = parse_dtype(cfg.matmul_dtype, field="matmul_dtype")

    def run(batch: Batch) -> tuple[torch.Tensor, dict]:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            if drafter.meta.kind == "feature":
                return feature_drafter_loss(drafter, batch, cfg.passes, cfg.regression_weight)
            return token_drafter_loss(drafter, batch)
    return run


def _save_checkpoint(path: Path, drafter: Drafter, opt, step: int, history: list) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": drafter.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history}, tmp)
    tmp.rename(path)
