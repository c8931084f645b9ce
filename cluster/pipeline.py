"""A speculation pipeline on Ray: the target and the drafter as actors on their own resources.

Both actors go into one placement group (one bundle each, `cluster.placement_strategy`), so a pipeline starts
only when both fit, and fails early, naming what is missing, when they cannot. The drafter actor serves the
speculation channel (gRPC) on its node and registers the address through Ray (its `address` method); the target
actor dials it and runs the step loop. The driver only submits prompts and reads outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from mirrorspec.cluster.actors import DrafterActor, TargetActor
from mirrorspec.cluster.config import ProjectConfig, RoleConfig
from mirrorspec.cluster.ray_cluster import connect
from mirrorspec.orchestration.errors import InvalidRequestError
from mirrorspec.orchestration.params import SamplingParams, SpecParams

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 60.0


def actor_options(role: RoleConfig) -> dict:
    """Ray actor options for a role's resources: CPU -> num_cpus, GPU -> num_gpus, anything else custom."""
    custom = {k: v for k, v in role.resources.items() if k not in ("CPU", "GPU")}
    return {"num_cpus": role.resources.get("CPU", 0), "num_gpus": role.resources.get("GPU", 0),
            "resources": custom}


class Pipeline:
    def __init__(self, config: ProjectConfig) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cluster, engine = config.cluster, config.engine
        connect(cluster)
        roles = [cluster.target] + ([cluster.drafter] if engine.drafter else [])
        _check_resources(roles, ray.cluster_resources())
        self.group = placement_group([dict(r.resources) for r in roles], strategy=cluster.placement_strategy)
        ready, _ = ray.wait([self.group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            ray.util.remove_placement_group(self.group)
            wanted = " + ".join(str(r.resources) for r in roles)
            raise InvalidRequestError("cluster", f"the Ray cluster cannot place the pipeline ({wanted}, "
                                                 f"{cluster.placement_strategy}); it has {ray.available_resources()}")

        def on(bundle: int, role: RoleConfig) -> dict:
            strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=bundle)
            return {"scheduling_strategy": strategy, **actor_options(role)}

        self.drafter = None
        address = None
        try:
            if engine.drafter:
                self.drafter = ray.remote(DrafterActor).options(**on(1, cluster.drafter)).remote(
                    engine, cluster.drafter, port=cluster.drafter_port, branch_budget=cluster.branch_budget)
                address = ray.get(self.drafter.address.remote())
            # Two concurrent calls: `progress` can be read while `generate` runs.
            self.target = ray.remote(TargetActor).options(max_concurrency=2, **on(0, cluster.target)).remote(
                engine, cluster.target, address, reply_timeout_s=cluster.reply_timeout_s)
            ray.get(self.target.channel_stats.remote())  # surfaces the target's start-up errors here
        except ray.exceptions.RayActorError as exc:
            self.shutdown()
            cause = exc.__cause__ or exc
            if isinstance(cause, InvalidRequestError):
                raise cause from None
            raise
        self.drafter_address = address

    def generate(self, prompts: list, sampling: SamplingParams | list[SamplingParams] | None = None,
                 spec: SpecParams | None = None, *, chat: bool = False) -> list:
        import ray

        return ray.get(self.target.generate.remote(prompts, sampling, spec, chat))

    def stream(self, prompt, sampling: SamplingParams | None = None, spec: SpecParams | None = None, *,
               chat: bool = False) -> Iterator:
        import ray

        for ref in self.target.stream.options(num_returns="streaming").remote(prompt, sampling, spec, chat):
            yield ray.get(ref)

    def generate_async(self, prompts: list, sampling=None, spec: SpecParams | None = None, *, chat: bool = False):
        """Start `generate`; returns a Ray object ref (ray.get it for the outputs)."""
        return self.target.generate.remote(prompts, sampling, spec, chat)

    def progress(self) -> int:
        """Drafts the target has received so far."""
        import ray

        return ray.get(self.target.progress.remote())

    def channel_stats(self) -> dict:
        import ray

        return ray.get(self.target.channel_stats.remote())

    def round_trip_s(self) -> float | None:
        """The speculation channel's own latency, measured from the target actor."""
        import ray

        return ray.get(self.target.round_trip_s.remote())

    def kill_drafter(self) -> None:
        import ray

        if self.drafter is not None:
            ray.kill(self.drafter, no_restart=True)

    def shutdown(self) -> None:
        import ray

        for actor in (getattr(self, "target", None), self.drafter):
            if actor is not None:
                ray.kill(actor, no_restart=True)
        ray.util.remove_placement_group(self.group)


def _check_resources(roles: list[RoleConfig], offered: dict) -> None:
    """Fail at once, naming the resource, when the whole cluster cannot hold the pipeline."""
    wanted: dict[str, float] = {}
    for role in roles:
        for name, amount in role.resources.items():
            wanted[name] = wanted.get(name, 0) + amount
    for name, amount in wanted.items():
        if offered.get(name, 0) < amount:
            raise InvalidRequestError(f"cluster.resources.{name}", f"the pipeline needs {amount:g} {name} but the "
                                                                   f"Ray cluster has {offered.get(name, 0):g}")
