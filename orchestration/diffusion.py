"""Masked-diffusion decoding: which masked positions to commit at each denoising step.

The canvas is the prompt followed by `gen_length` mask tokens, decoded block by block, left to right
(semi-autoregressive; one block = pure diffusion). Every step runs one forward over the canvas and commits some
masked positions of the current block to their predicted tokens; committed tokens are never re-masked.
Commit rules (../shared/research/ALGORITHMS.md §4):
- `low-confidence` (LLaDA, arXiv 2502.09992, reference `generate()`): a linear schedule commits the same number
  of tokens per step (`steps` per generation, split evenly over blocks), the most confident first;
  `random` draws the order instead.
- `threshold` (Fast-dLLM, arXiv 2505.22618): the most confident token, plus every token whose confidence is at
  least `threshold`.
- `factor` (Fast-dLLM's later rule): the largest n whose n-th confidence c_(n) >= 1 - factor / (n + 1).
- `adaptive_blocks` (AdaBlock, arXiv 2509.26432): at a block's first step, the block ends at the most confident
  predicted delimiter (newline) within a quarter of the generation, if its confidence is >= delimiter_confidence.
- `early_commit` (Prophet, arXiv 2508.19982): when the mean top-1 - top-2 logit gap over the block's masked
  positions reaches 7.5 / 5.0 / 2.5 (first / second / last third of the steps), commit the whole block at once.
  (Prophet watches an answer region; open-ended generation has none, so this engine watches the block.)
- `stop_at_eos`: once EOS is committed, everything after it is done (Learn2PD's end-of-text truncation).
Approximate KV caches (Fast-dLLM, Alg. 1), `cache`:
- `prefix`: a block's first step runs the whole canvas and keeps the K/V of the positions before the block; its
  later steps run only the block and the masked suffix, attending to those kept K/V.
- `dual`: the first step also keeps the suffix's K/V (still masks); later steps run only the block.
The kept K/V are not updated inside a block, so cached decoding is an approximation: outputs may differ from
uncached ones (the bench reports how often they agree).

Each row keeps its own block, step count and random generator, and every decision reads only that row's
logits: a sequence's output does not depend on the rest of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.sampling import seeded_generator
from mirrorspec.params import FIXED_SCHEDULE, DiffusionParams
from mirrorspec.workers.diffusion_model import ContextKV, DiffusionOutput, pad_contexts

PROPHET_GAPS = ((1 / 3, 7.5), (2 / 3, 5.0), (1.0, 2.5))  # (progress below, required logit gap)



@dataclass
class _Row:
    """One sequence's canvas and where its decoding stands."""

    canvas: torch.Tensor  # [prompt + gen_length]
    start: int  # first generated position
    params: DiffusionParams
    generator: torch.Generator
    block_start: int = 0
    block_end: int = 0
    step: int = 0  # steps taken in this block
    schedule: list[int] = field(default_factory=list)  # fixed commits per step (low-confidence / random)
    eos_at: int | None = None
    forwards: int = 0
    blocks: list[int] = field(default_factory=list)
    new_block: bool = True
    # Inside a block with a cache: the K/V kept at the block's first step ([layers, 1, H, C, D]) and the
    # positions [query_start, query_end) that the block's later steps recompute.
    context: ContextKV | None = None
    query_start: int = 0
    query_end: int = 0


class DiffusionDecoder:
    def __init__(self, model, *, eos_ids: tuple[int, ...] = (), delimiter_ids: tuple[int, ...] = ()) -> None:
        if model.meta.draft_window:
            raise InvalidRequestError("target", f"{model.path} is a block-diffusion drafter (it reads committed "
                                                f"tokens causally); use it as --drafter with --method diffusion-draft")
        self.model = model  # workers.diffusion_model.DiffusionLM
        self.eos_ids = tuple(eos_ids)
        self.delimiter_ids = tuple(delimiter_ids)

    # ---------------------------------------------------------------------------------------- API
    def generate(self, prompts: list[list[int]], params: DiffusionParams) -> list[DiffusionOutput]:
        outputs: dict[int, DiffusionOutput] = {}
        for index, output in self._run(prompts, params):
            outputs[index] = output
        return [outputs[i] for i in range(len(prompts))]

    def stream(self, prompt: list[int], params: DiffusionParams) -> Iterator[list[int]]:
        """The tokens of each committed block as soon as the block is complete (EOS ends the stream)."""
        for _, block in self._run([prompt], params, blocks=True):
            ends = [k for k, token in enumerate(block) if token in self.eos_ids] if params.stop_at_eos else []
            yield block[: ends[0] + 1] if ends else block
            if ends:
                return

    # ----------------------------------------------------------------------------------- decoding
    def _run(self, prompts: list[list[int]], params: DiffusionParams, blocks: bool = False):
        params.validate()
        if not prompts or any(not p for p in prompts):
            raise InvalidRequestError("prompt", "is empty")
        if params.cache != "none" and not self.model.supports_cache:
            raise InvalidRequestError("cache", f"{self.model.path} runs its own remote code; approximate KV caches "
                                               f"need one of this project's dLLMs (use cache none)")
        rows = [self._new_row(p, params) for p in prompts]
        active = list(range(len(rows)))
        started = time.perf_counter()
        while active:
            # Rows at a block's first step (or without a cache) run the whole canvas; the others only their block.
            full = [i for i in active if rows[i].context is None]
            cached = [i for i in active if rows[i].context is not None]
            results = {}
            if full:
                results.update(zip(full, self._forward([rows[i] for i in full])))
            if cached:
                results.update(zip(cached, self._forward_cached([rows[i] for i in cached])))
            still = []
            for i in active:
                row = rows[i]
                row.forwards += 1
                logits, columns, offset, kv = results[i]
                finished_block = self._step(row, logits, columns, offset)
                if kv is not None:
                    self._keep_context(row, kv)
                if row.new_block:
                    row.context = None
                if finished_block is not None and blocks:
                    yield i, finished_block
                if self._done(row):
                    if not blocks:
                        yield i, self._output(row, time.perf_counter() - started)
                else:
                    still.append(i)
            active = still

    def _new_row(self, prompt: list[int], params: DiffusionParams) -> _Row:
        canvas = torch.cat([torch.tensor(prompt, dtype=torch.long),
                            torch.full((params.gen_length,), self.model.mask_id, dtype=torch.long)])
        # Seeded by the request alone, not by its place in the batch: the batch cannot change what it samples.
        generator = seeded_generator(params.seed)
        row = _Row(canvas, len(prompt), params, generator)
        row.block_start = row.block_end = row.start
        return row

    def _forward(self, rows: list[_Row]) -> list[tuple]:
        """One forward over the rows' whole canvases, left-padded; rows see only their own positions. Per row:
        (logits [L, C], columns, offset 0, the canvas's K/V when the row keeps a cache, else None)."""
        width = max(r.canvas.shape[0] for r in rows)
        ids = torch.full((len(rows), width), self.model.mask_id, dtype=torch.long)
        valid = torch.zeros((len(rows), width), dtype=torch.bool)
        for k, r in enumerate(rows):
            ids[k, width - r.canvas.shape[0]:] = r.canvas
            valid[k, width - r.canvas.shape[0]:] = True
        if rows[0].params.cache == "none":
            logits, columns = self.model.logits(ids, valid)
            kv = None
        else:
            positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
            see = valid[:, None, :] | torch.eye(width, dtype=torch.bool)[None]
            logits, columns, kv = self.model.logits_in_context(ids, positions, see)
        logits, columns = logits.cpu(), None if columns is None else columns.cpu()
        out = []
        for k, r in enumerate(rows):
            length = r.canvas.shape[0]
            row_kv = None if kv is None else (kv.keys[:, k:k + 1, :, width - length:],
                                              kv.values[:, k:k + 1, :, width - length:])
            out.append((logits[k, width - length:], columns, 0, row_kv))
        return out

    def _forward_cached(self, rows: list[_Row]) -> list[tuple]:
        """One forward over each row's block (and, with the prefix cache, its masked suffix), attending to the
        K/V kept at the block's start. Queries and contexts are left-padded to the longest in the batch."""
        spans = [r.query_end - r.query_start for r in rows]
        width = max(spans)
        ids = torch.full((len(rows), width), self.model.mask_id, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        valid = torch.zeros((len(rows), width), dtype=torch.bool)
        for k, (r, span) in enumerate(zip(rows, spans)):
            ids[k, width - span:] = r.canvas[r.query_start:r.query_end]
            positions[k, width - span:] = torch.arange(r.query_start, r.query_end)
            valid[k, width - span:] = True
        see = valid[:, None, :] | torch.eye(width, dtype=torch.bool)[None]
        logits, columns, _ = self.model.logits_in_context(ids, positions, see, pad_contexts([r.context for r in rows]))
        logits, columns = logits.cpu(), None if columns is None else columns.cpu()
        return [(logits[k, width - span:], columns, r.query_start, None) for k, (r, span) in enumerate(zip(rows, spans))]

    def _keep_context(self, row: _Row, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        """After a block's first step: keep the K/V that the block's later steps reuse (Fast-dLLM)."""
        if row.new_block:  # the block completed in its first step: nothing to reuse
            return
        # A shifted model predicts a block's first token at the position before it: recompute that one too.
        start = row.block_start - (1 if self.model.meta.shifted else 0)
        length = row.canvas.shape[0]
        keep = torch.zeros(length, dtype=torch.bool)
        keep[:start] = True
        if row.params.cache == "dual":
            keep[row.block_end:] = True
            row.query_end = row.block_end
        else:
            row.query_end = length
        row.query_start = start
        where = keep.nonzero()[:, 0].to(kv[0].device)
        keys, values = kv[0].index_select(3, where), kv[1].index_select(3, where)
        row.context = ContextKV(keys, values, torch.ones((1, len(where)), dtype=torch.bool))

    def _step(self, row: _Row, logits: torch.Tensor, columns: torch.Tensor | None,
              offset: int = 0) -> list[int] | None:
        """Commit this step's positions; returns the block's tokens when the step completed a block.
        `logits` [L, C]: row k is canvas position offset + k; column c is token id columns[c] (or c itself)."""
        p = row.params
        if row.new_block:  # only ever after a whole-canvas forward (offset 0)
            self._open_block(row, logits, columns)
        masked = row.canvas == self.model.mask_id
        in_block = torch.zeros_like(masked)
        in_block[row.block_start:row.block_end] = True
        candidates = masked & in_block
        # Only the block's masked positions can be committed: predict those (a full-vocabulary softmax and
        # Gumbel noise over the whole canvas would be wasted on the rest).
        where = candidates.nonzero()[:, 0]
        scores = logits[where - offset]
        picked = _predict(scores, p.temperature, row.generator)
        if p.strategy == "random":
            chance = torch.rand(picked.shape, generator=row.generator, dtype=torch.float64).float()
        else:
            chance = torch.softmax(scores, dim=-1).gather(-1, picked[:, None])[:, 0]
        # Confidence over the whole canvas (-inf where nothing can be committed), so that ties break as in LLaDA.
        confidence = torch.full(candidates.shape, float("-inf"))
        confidence[where] = chance
        chosen = self._choose(row, scores, confidence, candidates)
        tokens = picked if columns is None else columns[picked]
        row.canvas[where[chosen[where]]] = tokens[chosen[where]]
        row.step += 1
        self._truncate_at_eos(row)
        if bool((row.canvas[row.block_start:row.block_end] == self.model.mask_id).any()):
            return None
        block = row.canvas[row.block_start:row.block_end].tolist()
        row.blocks.append(len(block))
        row.block_start, row.new_block = row.block_end, True
        return block

    def _open_block(self, row: _Row, logits: torch.Tensor, columns: torch.Tensor | None) -> None:
        p = row.params
        end = row.start + p.gen_length
        length = min(p.block_length, end - row.block_start)
        if p.adaptive_blocks and self.delimiter_ids:
            length = self._adaptive_length(row, logits, columns, length, end)
        row.block_end = row.block_start + length
        row.step, row.new_block = 0, False
        if p.strategy in FIXED_SCHEDULE:
            per_block = p.total_steps // p.num_blocks
            masked = int((row.canvas[row.block_start:row.block_end] == self.model.mask_id).sum())
            base, extra = divmod(masked, per_block)  # LLaDA's linear schedule: the remainder goes first
            row.schedule = [base + (1 if s < extra else 0) for s in range(per_block)]

    def _adaptive_length(self, row: _Row, logits: torch.Tensor, columns: torch.Tensor | None, default: int,
                         end: int) -> int:
        """AdaBlock: end the block at the most confident predicted delimiter in the look-ahead window."""
        p = row.params
        window_end = min(end, row.block_start + max(1, int(0.25 * p.gen_length)))
        probs = torch.softmax(logits[row.block_start:window_end], dim=-1)
        top_p, top = probs.max(-1)
        if columns is not None:
            top = columns[top]
        is_delimiter = torch.isin(top, torch.tensor(self.delimiter_ids))
        if not bool(is_delimiter.any()):
            return default
        best = int(torch.where(is_delimiter, top_p, torch.tensor(-1.0)).argmax())
        return best + 1 if float(top_p[best]) >= p.delimiter_confidence else default

    def _choose(self, row: _Row, scores: torch.Tensor, confidence: torch.Tensor,
                candidates: torch.Tensor) -> torch.Tensor:
        """`scores` [n, C]: the logits of the n candidate positions, in canvas order."""
        p = row.params
        available = int(candidates.sum())
        chosen = torch.zeros_like(candidates)
        if available == 0:
            return chosen
        if p.early_commit and _prophet_ready(row, scores):
            return candidates
        if p.strategy in FIXED_SCHEDULE:
            count = row.schedule[min(row.step, len(row.schedule) - 1)]
        else:
            ordered = confidence.sort(descending=True).values[:available]
            if p.strategy == "threshold":
                count = max(1, int((ordered >= p.threshold).sum()))
            else:  # factor: the largest n with c_(n) >= 1 - f / (n + 1)
                n = torch.arange(1, available + 1)
                fits = (ordered >= 1 - p.factor / (n + 1)).nonzero()
                count = int(fits.max()) + 1 if len(fits) else 1
        count = min(count, available)
        chosen[torch.topk(confidence, count).indices] = True
        return chosen

    def _truncate_at_eos(self, row: _Row) -> None:
        if not row.params.stop_at_eos or not self.eos_ids:
            return
        generated = row.canvas[row.start:]
        hits = torch.isin(generated, torch.tensor(self.eos_ids)).nonzero()
        if len(hits):
            first = row.start + int(hits[0])
            row.eos_at = first
            row.canvas[first + 1:] = row.canvas[first]  # nothing after the end is decoded

    def _done(self, row: _Row) -> bool:
        return not bool((row.canvas[row.start:] == self.model.mask_id).any())

    def _output(self, row: _Row, seconds: float) -> DiffusionOutput:
        end = row.eos_at + 1 if row.eos_at is not None else row.canvas.shape[0]
        return DiffusionOutput(row.canvas[row.start:end].tolist(), "eos" if row.eos_at is not None else "length",
                               row.forwards, row.blocks, seconds)


def _predict(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Each position's token: argmax, or Gumbel-max sampling in float64 (exp(l) / (-log u)^T, as LLaDA)."""
    if temperature == 0:
        return logits.argmax(-1)
    noise = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
    return (logits.double().exp() / (-torch.log(noise)) ** temperature).argmax(-1)


def _prophet_ready(row: _Row, scores: torch.Tensor) -> bool:
    top2 = scores.topk(2, dim=-1).values
    gap = float((top2[:, 0] - top2[:, 1]).mean())
    p = row.params
    per_block = p.total_steps // p.num_blocks if p.strategy in FIXED_SCHEDULE else p.block_length
    progress = row.step / max(1, per_block)
    needed = next(g for bound, g in PROPHET_GAPS if progress < bound or bound == 1.0)
    return gap >= needed

