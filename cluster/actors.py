"""The two roles of a speculation pipeline: the drafter (serving the speculation channel) and the target
(running the engine's step loop, with the drafter behind a gRPC stream).

The classes are plain Python: cluster/pipeline.py turns them into Ray actors placed on their resources;
`mirrorspec serve-drafter` and `--drafter-address` run them as plain processes (cluster/launch.py).
"""

from __future__ import annotations

import logging
import os

import torch

from mirrorspec.cluster.config import RoleConfig
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.drafter_session import as_draft_service
from mirrorspec.orchestration.engine import Engine, EngineConfig
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.speculation.remote_drafter import RemoteDrafter
from mirrorspec.workers.model_worker import greedy_logits
from mirrorspec.workers.tensor_parallel import GroupSpec, LockstepWorker, follow

logger = logging.getLogger(__name__)


def pin(role: RoleConfig) -> None:
    """Thread count and CPU affinity of this actor process (emulates separate devices on one CPU)."""
    if role.cores:
        os.sched_setaffinity(0, role.cores)
    if role.threads:
        torch.set_num_threads(role.threads)


class DrafterActor:
    def __init__(self, engine: EngineConfig, role: RoleConfig, *, secret: str, host: str = "127.0.0.1",
                 port: int = 0, branch_budget: int = 8) -> None:
        from mirrorspec.orchestration.factory import build_drafter
        from mirrorspec.speculation.drafter_server import serve
        from mirrorspec.workers.models import load_model_info

        pin(role)
        target = load_model_info(engine.target)
        worker = build_drafter(engine, target)
        if worker is None:
            raise InvalidRequestError("drafter", "the pipeline has no drafter to serve")
        self.session = as_draft_service(worker, max_spec_nodes=engine.max_spec_nodes, branch_budget=branch_budget)
        feature_size = worker.feature_width if worker.uses_features else 0
        self.server, self._address = serve(self.session, vocab_size=target.config.vocab_size, secret=secret,
                                           feature_size=feature_size, host=host, port=port)
        logger.info("drafter serving the speculation channel on %s", self._address)

    def address(self) -> str:
        return self._address

    def pid(self) -> int:
        return os.getpid()


class TargetActor:
    """The target's role: the engine's step loop, the target model (rank 0 of a tensor-parallel group when
    `group` is given) and the dialed drafter."""

    def __init__(self, engine: EngineConfig, role: RoleConfig, drafter_address: str | None, *,
                 secret: str | None = None, reply_timeout_s: float = 10.0, group: GroupSpec | None = None) -> None:
        from mirrorspec.orchestration.factory import (
            build_ngram_corpus,
            build_target,
            eos_token_ids,
            step_cost_source,
            worker_sizes,
        )

        pin(role)
        worker, target = build_target(engine, group)
        if group is not None and group.world_size > 1:
            worker = LockstepWorker(worker)
        self.remote = None
        if drafter_address:
            self.remote = RemoteDrafter(drafter_address, vocab_size=worker.vocab_size, secret=secret,
                                        reply_timeout_s=reply_timeout_s)
        self.engine = Engine(worker, self.remote, tokenizer=target.tokenizer, eos_ids=eos_token_ids(target),
                             max_model_len=worker_sizes(engine, target.config)[0], max_batch=engine.max_batch,
                             max_spec_nodes=engine.max_spec_nodes, seed=engine.seed,
                             step_cost=step_cost_source(engine, worker),
                             ngram_corpus=build_ngram_corpus(engine, target.tokenizer))

    def generate(self, prompts: list, sampling: SamplingParams | list[SamplingParams] | None,
                 spec: SpecParams | None, chat: bool | None = None) -> list:
        return self.engine.generate(prompts, sampling, spec, chat=chat)

    def stream(self, prompt, sampling: SamplingParams | None, spec: SpecParams | None, chat: bool | None = None):
        yield from self.engine.stream(prompt, sampling, spec, chat=chat)

    def progress(self) -> int:
        return 0 if self.remote is None else self.remote.proposes

    def channel_stats(self) -> dict:
        """The speculation channel's accounting since the last call (zeroed on read)."""
        if self.remote is None:
            return self.engine.scheduler.timing.read()
        return {**self.remote.read_accounting(), **self.engine.scheduler.timing.read()}

    def round_trip_s(self) -> float | None:
        return None if self.remote is None else self.remote.round_trip_s()

    def probe_logits(self, token_ids: list[int], steps: int) -> torch.Tensor:
        """The target's logits along its own greedy continuation of `token_ids` (see greedy_logits)."""
        return greedy_logits(self.engine.target, token_ids, steps)

    def pid(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        if self.remote is not None:
            self.remote.close()
        if isinstance(self.engine.target, LockstepWorker):
            self.engine.target.stop_followers()


class TargetRankActor:
    """Rank 1..N-1 of a tensor-parallel target: its shard, run in lockstep with rank 0's calls."""

    def __init__(self, engine: EngineConfig, role: RoleConfig, group: GroupSpec) -> None:
        from mirrorspec.orchestration.factory import build_target

        pin(role)
        self.worker, _ = build_target(engine, group)

    def follow(self) -> int:
        """Runs until rank 0 stops the group (or dies: then the driver ends this actor)."""
        return follow(self.worker)

    def pid(self) -> int:
        return os.getpid()
