"""The drafter as the decoding core sees it (`DraftService` and its messages), and what runs generation
(`GenerationBackend`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from mirrorspec.orchestration.draft_tree import DraftTree
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.params import SamplingParams, SpecParams


@dataclass
class OpenSpec:
    seq_id: int
    seed: int  # the drafter's own random stream (sampled chains)
    sampling: SamplingParams


@dataclass
class Report:
    """What the target committed for one sequence since its previous report, and the next draft's shape."""

    seq_id: int
    committed: list[int]  # new committed tokens; the last one is the root of the next draft
    accepted_nodes: list[int] = field(default_factory=list)  # accepted nodes of the previous draft
    features: torch.Tensor | None = None  # [n, H] target hidden states of newly known positions
    depth: int = 0
    topk: int = 1
    budget: int = 0
    branches: bool = False  # mirror: the next window is a chain whose branches are rolled out at early exit
    # The drafting stop rule: stop extending the draft where no new node's predicted child path estimate reaches
    # this (orchestration/drafting.py); 0 drafts the whole shape.
    min_path: float = 0.0
    corpus: bool = False  # ngram: also copy from the engine's corpus (SpecParams.copies_corpus)


@dataclass
class Proposal:
    tree: DraftTree
    reused: bool = False  # taken from a branch rolled out during the previous step


@dataclass
class ExitCandidates:
    """The target's early-exit top-kappa at each window position (row 0: after the root)."""

    seq_id: int
    ids: torch.Tensor  # [positions, kappa] token ids
    logprobs: torch.Tensor  # [positions, kappa]


@runtime_checkable
class DraftService(Protocol):
    """The drafter as the scheduler sees it: in-process (orchestration/drafter_session.py over a drafter model,
    orchestration/diffusion_draft.py for a block-diffusion drafter) or across the gRPC speculation channel
    (speculation/remote_drafter.py). Any call may raise: the scheduler then decodes without drafts and later calls
    `reset` and reopens its sequences."""

    uses_features: bool  # each report carries the target's hidden states (a feature drafter)
    feature_layers: tuple[int, ...]  # feature drafters: target layers whose states come before the final one
    vocabulary: list[int] | None  # the only tokens the drafter can propose (None: the target's whole vocabulary)
    drafts_by_diffusion: bool  # a block-diffusion drafter (serves `diffusion-draft`); else an AR one

    def open(self, specs: list[OpenSpec]) -> None: ...

    def release(self, seq_ids: list[int]) -> None: ...

    def propose(self, reports: list[Report], patience_s: float | None = None) -> dict[int, Proposal] | None:
        """The next drafts. A remote drafter that has not answered within `patience_s` gives none this time
        ({}: the target goes on without them; the late answer is dropped), and None (nothing sent, the reports
        stay pending) while that answer is outstanding. An in-process drafter always answers."""

    def early_exit(self, candidates: list[ExitCandidates]) -> None:
        """Mirror-SD: the target's early-exit candidates for the window it is verifying now."""

    def prepare_pending(self) -> None:
        """Work the last answer left for later (feeding a reused window), done off the target's critical path;
        a drafter's server calls it right after sending each answer."""

    def reset(self) -> None:
        """Forget every sequence (after a failure); the next calls start afresh."""


class LocalDraftService(DraftService, Protocol):
    """A DraftService computing in this process: it also counts its compute time (the channel's server reports
    it with each answer, then zeroes it)."""

    busy_s: float  # compute seconds since last zeroed
    propose_s: float  # ... of which inside `propose`


class GenerationBackend(Protocol):
    """Where generation runs, as the CLI, the bench and the batch job see it: the in-process Engine
    (orchestration/engine.py), a target dialing a served drafter (cluster/actors.py: TargetActor) or a pipeline
    of Ray actors (cluster/pipeline.py)."""

    def generate(self, prompts: list, sampling: SamplingParams | list[SamplingParams] | None = None,
                 spec: SpecParams | None = None, *, chat: bool | None = None) -> list[RequestOutput]: ...

    def stream(self, prompt, sampling: SamplingParams | None = None, spec: SpecParams | None = None, *,
               chat: bool | None = None) -> Iterator[RequestOutput]: ...

    def shutdown(self) -> None:
        """Free what it holds (actors, channels); nothing for an in-process engine."""
