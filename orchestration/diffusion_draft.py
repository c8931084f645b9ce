"""`diffusion-draft`: a block-diffusion drafter proposes a whole token tree from one forward per step.

The drafter (workers/diffusion_model.py, `draft_window` > 0) reads the committed tokens causally, so their K/V
are computed once and kept, and a window of mask tokens after them that attends to every committed token and to
the whole window. Its logits are shifted (Dream): the last committed token predicts draft position 1 and window
mask j predicts position j + 2, all in the same forward. Per position, the top-k tokens form a lattice; the tree
is the `budget` best nodes of that lattice by summed log-probability (best-first search, ties by order), so
drafts are deterministic and the target's tree verification stays exact (a deterministic node is accepted with
the target's probability of its token, ../shared/research/ALGORITHMS.md §5.3). One drafter forward per step,
whatever the tree's depth, where an AR drafter runs one per level.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.orchestration.interfaces import ExitCandidates, OpenSpec, Proposal, Report
from mirrorspec.workers.diffusion_model import ContextKV, DiffusionLM, pad_contexts


@dataclass
class _State:
    tokens: list[int] = field(default_factory=list)  # committed tokens the target reported
    context: ContextKV | None = None  # K/V of tokens[:cached], [layers, 1, H, cached, D]
    cached: int = 0


class DiffusionDraftService:
    """The DraftService of a block-diffusion drafter (in-process, or behind the gRPC speculation channel)."""

    uses_features = False
    feature_layers: tuple[int, ...] = ()
    drafts_by_diffusion = True

    def __init__(self, model: DiffusionLM) -> None:
        if not model.meta.draft_window:
            raise InvalidRequestError("drafter", f"{model.path} is a diffusion LM, not a diffusion drafter (no "
                                                 f"draft_window); train one with train-dllm --from-drafter")
        self.model = model
        self.window = model.meta.draft_window
        self.vocabulary = [t for t in model.meta.vocab if t != model.mask_id] if model.meta.vocab else None
        self._seqs: dict[int, _State] = {}
        self.busy_s = 0.0
        self.propose_s = 0.0

    # ------------------------------------------------------------------------------------ lifecycle
    def open(self, specs: list[OpenSpec]) -> None:
        for spec in specs:
            if spec.seq_id in self._seqs:
                raise InvalidRequestError("open.id", f"sequence {spec.seq_id} is already open")
            self._seqs[spec.seq_id] = _State()

    def release(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            self._seqs.pop(seq_id, None)

    def reset(self) -> None:
        self._seqs.clear()

    def prepare_pending(self) -> None:
        """Nothing waits between steps: every draft is fresh."""

    def early_exit(self, candidates: list[ExitCandidates]) -> None:
        raise InvalidRequestError("method", "a diffusion drafter drafts for diffusion-draft, not for mirror")

    # -------------------------------------------------------------------------------------- propose
    def propose(self, reports: list[Report], patience_s: float | None = None) -> dict[int, Proposal]:
        started = time.perf_counter()
        work = []
        for report in reports:
            state = self._seqs.get(report.seq_id)
            if state is None:
                raise InvalidRequestError("propose.id", f"sequence {report.seq_id} is not open")
            if not report.committed:
                raise InvalidRequestError("propose.committed", f"sequence {report.seq_id}: nothing committed")
            state.tokens += report.committed
            if report.depth > 0:
                work.append((report, state))
        out = {}
        if work:
            rows, columns = self._window_logprobs([state for _, state in work])
            for (report, _), row in zip(work, rows):
                # A tree deeper than the drafter's window is cut to the window (it predicts no further).
                out[report.seq_id] = Proposal(lattice_tree(row[: report.depth], columns, report.topk, report.budget))
        elapsed = time.perf_counter() - started
        self.busy_s += elapsed
        self.propose_s += elapsed
        return out

    def _window_logprobs(self, states: list[_State]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One forward for all rows: the new committed tokens (causal among themselves) and the mask window.
        Returns per row the log-probabilities [window, C] of draft positions 1..window, and the token id of each
        column C (None: the columns are the token ids)."""
        model = self.model
        catchups = [s.tokens[s.cached:] for s in states]
        spans = [len(c) + self.window for c in catchups]
        width = max(spans)
        ids = torch.full((len(states), width), model.mask_id, dtype=torch.long)
        positions = torch.zeros((len(states), width), dtype=torch.long)
        see = torch.eye(width, dtype=torch.bool).repeat(len(states), 1, 1)
        for k, (state, catchup, span) in enumerate(zip(states, catchups, spans)):
            first = width - span
            ids[k, first:first + len(catchup)] = torch.tensor(catchup)
            positions[k, first:] = torch.arange(state.cached, state.cached + span)
            queries = torch.arange(first, width)
            causal = queries[:, None] >= queries[None, :]
            in_window = (queries >= first + len(catchup))[:, None].expand(-1, span)
            see[k, first:, first:] = causal | in_window
        logits, columns, new = model.logits_in_context(ids, positions, see, pad_contexts([s.context for s in states]))
        out = []
        for k, (state, catchup) in enumerate(zip(states, catchups)):
            # Shifted logits: the window's positions hold the predictions of draft positions 1..window.
            out.append(torch.log_softmax(logits[k, width - self.window:], dim=-1).cpu())
            fresh = slice(width - self.window - len(catchup), width - self.window)
            keys, values = new.keys[:, k:k + 1, :, fresh], new.values[:, k:k + 1, :, fresh]
            if state.context is not None:
                keys = torch.cat([state.context.keys, keys], dim=3)
                values = torch.cat([state.context.values, values], dim=3)
            state.context = ContextKV(keys, values, torch.ones((1, keys.shape[3]), dtype=torch.bool))
            state.cached += len(catchup)
        return out, None if columns is None else columns.cpu()


def lattice_tree(logprobs: torch.Tensor, columns: torch.Tensor | None, topk: int, budget: int) -> DraftTree:
    """The `budget` best nodes of the lattice whose level d holds the top-`topk` tokens of draft position d
    (`logprobs` [depth, C]; column c is token columns[c], or c), a node's score being the sum of its path's
    log-probabilities. Best-first, so every kept node's parent is kept."""
    top = logprobs.topk(min(topk, logprobs.shape[-1]), dim=-1)
    token_ids = (top.indices if columns is None else columns[top.indices]).tolist()
    logprobs = top.values.tolist()
    tree = DraftTree()
    frontier: list[tuple[float, int, int, int, int]] = []  # (-score, order, parent node, level, rank)
    counter = 0

    def push_children(parent: int, level: int, score: float) -> None:
        nonlocal counter
        if level >= len(token_ids):
            return
        for rank in range(len(token_ids[level])):
            heapq.heappush(frontier, (-(score + logprobs[level][rank]), counter, parent, level, rank))
            counter += 1

    push_children(ROOT, 0, 0.0)
    while frontier and len(tree) < budget:
        negative, _, parent, level, rank = heapq.heappop(frontier)
        tree.tokens.append(token_ids[level][rank])
        tree.parents.append(parent)
        tree.proposals.append(None)  # deterministic: chosen by search, not sampled
        tree.logprobs.append(logprobs[level][rank])
        push_children(len(tree) - 1, level + 1, -negative)
    return tree
