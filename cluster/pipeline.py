"""A speculation pipeline on Ray: the target and the drafter as actors on their own resources.

Both actors go into one placement group (one bundle each, `cluster.placement_strategy`), so a pipeline starts
only when both fit, and fails early, naming what is missing, when they cannot. The drafter actor serves the
speculation channel (gRPC) on its node and registers the address through Ray (its `address` method); the target
actor dials it and runs the step loop. The driver only submits prompts and reads outputs.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mirrorspec.cluster.actors import DrafterActor, TargetActor, TargetRankActor
from mirrorspec.cluster.config import ProjectConfig, RoleConfig
from mirrorspec.cluster.ray_cluster import connect
from mirrorspec.errors import InvalidRequestError
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers.models import load_model_info
from mirrorspec.workers.tensor_parallel import GroupSpec, check_tp_size, exact_with_tp_error, free_port

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 60.0


def actor_options(role: RoleConfig) -> dict:
    """Ray actor options for a role's resources: CPU -> num_cpus, GPU -> num_gpus, anything else custom."""
    custom = {k: v for k, v in role.resources.items() if k not in ("CPU", "GPU")}
    return {"num_cpus": role.resources.get("CPU", 0), "num_gpus": role.resources.get("GPU", 0),
            "resources": custom}


class TargetGroupError(RuntimeError):
    """A rank of the tensor-parallel target died: the group's requests in flight failed, the group is down."""


class Pipeline:
    def __init__(self, config: ProjectConfig, *, target_actor: type = TargetActor, target_kwargs: dict | None = None,
                 target_concurrency: int = 2, group=None, first_bundle: int = 0) -> None:
        """`target_actor` (with `target_kwargs`) is rank 0's class: a TargetActor, or a subclass that serves
        requests (cluster/replicas.py) and so needs more concurrent calls. `group`: a placement group that already
        holds a bundle per role from `first_bundle` on (a Serve replica's own); by default the pipeline makes one."""
        cluster, engine = config.cluster, config.engine
        tp = cluster.tp_size
        if tp > 1:  # before any actor starts: a rank without heads is a configuration error
            check_tp_size(tp, load_model_info(engine.target).config)
            if engine.exact:
                raise exact_with_tp_error()
        connect(cluster)
        self._owns_group, self._first_bundle = group is None, first_bundle
        self.group = group if group is not None else self._placed(pipeline_roles(config), cluster.placement_strategy)
        self._engine, self._cluster = engine, cluster
        self._target_actor, self._target_kwargs = target_actor, dict(target_kwargs or {})
        self._target_concurrency = max(2, target_concurrency)  # at least: `progress` is read while `generate` runs
        self._secret = secrets.token_urlsafe(32)  # the speculation channel's shared secret, this pipeline's own
        self.drafter = None
        self.drafter_address = None
        self.followers: list = []  # target ranks 1..tp-1
        self._follow_refs: list = []
        self._down: str | None = None  # why the target group is down
        try:
            if engine.drafter:
                self.drafter = ray.remote(DrafterActor).options(**self._on(tp, cluster.drafter)).remote(
                    engine, cluster.drafter, secret=self._secret, port=cluster.drafter_port,
                    branch_budget=cluster.branch_budget)
                self.drafter_address = ray.get(self.drafter.address.remote())
            self._start_target()
        except Exception as exc:
            self.shutdown()
            cause = exc.__cause__ if isinstance(exc, ray.exceptions.RayActorError) else None
            if isinstance(cause, InvalidRequestError):
                raise cause from None
            raise

    @staticmethod
    def _placed(roles: list[RoleConfig], strategy: str):
        """A placement group with a bundle per role, once Ray has placed it (else the error names what is free)."""
        _check_resources(resources_of(roles), ray.cluster_resources())
        group = placement_group([dict(r.resources) for r in roles], strategy=strategy)
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            ray.util.remove_placement_group(group)
            wanted = " + ".join(str(r.resources) for r in roles)
            raise InvalidRequestError("cluster", f"the Ray cluster cannot place the pipeline ({wanted}, {strategy}); "
                                                 f"it has {ray.available_resources()}")
        return group

    def _on(self, bundle: int, role: RoleConfig) -> dict:
        index = self._first_bundle + bundle
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)
        return {"scheduling_strategy": strategy, **actor_options(role)}

    def _start_target(self) -> None:
        """The target's actors: rank 0 (the step loop) and, under tensor parallelism, ranks 1..N-1."""
        engine, cluster = self._engine, self._cluster
        groups = _group_specs(cluster.tp_size, "nccl" if engine.device.startswith("cuda") else "gloo")
        self.followers = [ray.remote(TargetRankActor).options(**self._on(r, cluster.rank_role(r))).remote(
            engine, cluster.rank_role(r), groups[r]) for r in range(1, cluster.tp_size)]
        self.target = ray.remote(self._target_actor).options(
            max_concurrency=self._target_concurrency, **self._on(0, cluster.rank_role(0))).remote(
            engine, cluster.rank_role(0), self.drafter_address, secret=self._secret,
            reply_timeout_s=cluster.reply_timeout_s, group=groups[0], **self._target_kwargs)
        # Every rank's start-up (the ranks meet in DeepSpeed's rendezvous): the first failure ends them all.
        self._watch({self.target.channel_stats.remote(): "target rank 0",
                     **{f.pid.remote(): f"target rank {r}" for r, f in enumerate(self.followers, 1)}})
        self._follow_refs = [f.follow.remote() for f in self.followers]

    def restart_target(self) -> None:
        """A fresh target group after a rank died (same placement; the drafter stays and serves it anew)."""
        for actor in (self.target, *self.followers):
            ray.kill(actor, no_restart=True)
        self._down = None
        self._follow_refs = []
        self._start_target()

    def group_alive(self) -> bool:
        """Whether every target rank still runs, without calling any: a follower's loop call ends only when its
        rank dies (or rank 0 stops it at shutdown). A Serve replica's health check reads it, since rank 0 alone
        may still answer while it waits in a collective for a dead rank."""
        if self._down:
            return False
        return not self._follow_refs or not ray.wait(self._follow_refs, num_returns=1, timeout=0)[0]

    def _watch(self, refs: dict, *, fetch: bool = True) -> list:
        """ray.get of each ref (mapped to who computes it), but when a target rank dies the whole group ends at
        once, with an error that names the rank, instead of the others waiting in a collective for ever."""
        if self._down:
            raise TargetGroupError(self._down)
        loops = {ref: f"target rank {r}" for r, ref in enumerate(self._follow_refs, 1)}
        pending, results = dict(refs), {}
        while pending:
            ref = ray.wait([*pending, *loops], num_returns=1)[0][0]
            who = pending.get(ref) or loops[ref]
            try:
                result = ray.get(ref) if fetch or ref in loops else None
            except ray.exceptions.RayError as exc:
                # A request's own error leaves the group intact; a dead rank or a failed follower loop does not.
                if not self.followers or (ref in pending and not isinstance(exc, ray.exceptions.RayActorError)):
                    raise
                self._fail(who, exc)
            if ref in loops:  # a follower's loop ends only when rank 0 stops it
                self._fail(who, None)
            results[ref] = result
            del pending[ref]
        return [results[r] for r in refs]

    def _fail(self, who: str, exc: Exception | None) -> None:
        cause = None if exc is None else (exc.__cause__ or exc)
        for actor in (getattr(self, "target", None), *self.followers):
            if actor is not None:
                ray.kill(actor, no_restart=True)
        self._follow_refs = []
        if isinstance(cause, InvalidRequestError):  # a start-up error of the configuration: report it as is
            self._down = f"the tensor-parallel target group did not start: {cause}"
            raise cause
        self._down = (f"the tensor-parallel target group is down: {who} of {len(self.followers) + 1} died "
                      f"({type(cause).__name__ if cause else 'left the group'}); its requests in flight failed; "
                      "restart_target() starts a new group")
        raise TargetGroupError(self._down) from exc

    def generate(self, prompts: list, sampling: SamplingParams | list[SamplingParams] | None = None,
                 spec: SpecParams | None = None, *, chat: bool | None = None) -> list:
        return self.get(self.target.generate.remote(prompts, sampling, spec, chat))

    def stream(self, prompt, sampling: SamplingParams | None = None, spec: SpecParams | None = None, *,
               chat: bool | None = None) -> Iterator:
        outputs = self.target.stream.options(num_returns="streaming").remote(prompt, sampling, spec, chat)
        while True:
            self._watch({outputs: "target rank 0"}, fetch=False)  # until the next output is ready
            try:
                ref = next(outputs)
            except StopIteration:
                return
            yield self.get(ref)

    def generate_async(self, prompts: list, sampling=None, spec: SpecParams | None = None, *, chat: bool | None = None):
        """Start `generate`; returns a Ray object ref (`get` it for the outputs)."""
        return self.target.generate.remote(prompts, sampling, spec, chat)

    def get(self, ref):
        """A result of the target actor, failing fast (TargetGroupError) if a tensor-parallel rank dies."""
        return self._watch({ref: "target rank 0"})[0]

    def progress(self) -> int:
        """Drafts the target has received so far."""
        return self.get(self.target.progress.remote())

    def channel_stats(self) -> dict:
        return self.get(self.target.channel_stats.remote())

    def round_trip_s(self) -> float | None:
        """The speculation channel's own latency, measured from the target actor."""
        return self.get(self.target.round_trip_s.remote())

    def probe_logits(self, token_ids: list[int], steps: int = 0):
        """The target's logits along its greedy continuation (every rank runs it): [steps + 1, vocab]."""
        return self.get(self.target.probe_logits.remote(token_ids, steps))

    def kill_target_rank(self, rank: int) -> None:
        """Kill one rank of the target group (what a crashed device does), for tests and drills."""
        ray.kill(self.target if rank == 0 else self.followers[rank - 1], no_restart=True)

    def kill_drafter(self) -> None:
        if self.drafter is not None:
            ray.kill(self.drafter, no_restart=True)

    def shutdown(self) -> None:
        target = getattr(self, "target", None)
        if target is not None and not self._down and self._follow_refs:
            # Let rank 0 stop its followers' loops; then kill everything regardless.
            ray.wait([target.shutdown.remote()], timeout=10)
        for actor in (target, *self.followers, self.drafter):
            if actor is not None:
                ray.kill(actor, no_restart=True)
        if self._owns_group:
            ray.util.remove_placement_group(self.group)


def pipeline_roles(config: ProjectConfig) -> list[RoleConfig]:
    """One pipeline's actors: every target rank, and the drafter's when the engine has a drafter."""
    cluster = config.cluster
    return ([cluster.rank_role(r) for r in range(cluster.tp_size)]
            + ([cluster.drafter] if config.engine.drafter else []))


def resources_of(roles: list[RoleConfig]) -> dict[str, float]:
    """What the roles take in all, by resource."""
    wanted: dict[str, float] = {}
    for role in roles:
        for name, amount in role.resources.items():
            wanted[name] = wanted.get(name, 0) + amount
    return wanted


def _check_resources(wanted: dict[str, float], offered: dict) -> None:
    """Fail at once, naming the resource, when the whole cluster cannot hold the pipeline."""
    for name, amount in wanted.items():
        if offered.get(name, 0) < amount:
            raise InvalidRequestError(f"cluster.resources.{name}", f"the pipeline needs {amount:g} {name} but the "
                                                                   f"Ray cluster has {offered.get(name, 0):g}")


def _group_specs(tp: int, backend: str) -> list:
    """Each target rank's place in the group (None for a single rank: no group at all)."""
    if tp == 1:
        return [None]
    port = free_port()
    return [GroupSpec(rank=r, world_size=tp, master_port=port, backend=backend) for r in range(tp)]
