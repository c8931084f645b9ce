"""Where generation runs: one process, two Ray actors, or this process dialing a drafter served elsewhere.

The third way needs no Ray: `mirrorspec serve-drafter` serves the speculation channel from one process (say on
CPU cores), and `--drafter-address HOST:PORT` makes the target in another process (say on a GPU) dial it. It is
the same two roles as the Ray pipeline (cluster/actors.py), started by hand or by another scheduler.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from mirrorspec.cluster.config import ClusterConfig, ProjectConfig
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.interfaces import GenerationBackend
from mirrorspec.params import SpecParams


SECRET_ENV = "MIRRORSPEC_SPECULATION_SECRET"


def speculation_secret() -> str:
    """The speculation channel's shared secret between a served drafter and the target that dials it (a Ray
    pipeline makes its own)."""
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise InvalidRequestError(SECRET_ENV, "set it to the same secret for `serve-drafter` and for the target "
                                              "that dials it with --drafter-address")
    return secret


def open_engine(engine: EngineConfig, spec: SpecParams, cluster: ClusterConfig, *, on_ray: bool) -> GenerationBackend:
    """Where generation runs for this configuration (across two roles it also has channel_stats and
    round_trip_s)."""
    if on_ray:
        from mirrorspec.cluster.pipeline import Pipeline

        return Pipeline(ProjectConfig(engine=engine, speculation=spec, cluster=cluster))
    if cluster.drafter_address:
        from mirrorspec.cluster.actors import TargetActor

        return TargetActor(engine, cluster.target, cluster.drafter_address, secret=speculation_secret(),
                           reply_timeout_s=cluster.reply_timeout_s)
    from mirrorspec.orchestration.factory import build_engine

    return build_engine(engine)


def serve_drafter(engine: EngineConfig, cluster: ClusterConfig, *, host: str, port: int) -> int:
    """Serve the speculation channel until SIGINT/SIGTERM; the address goes to stdout for scripts to read."""
    from mirrorspec.cluster.actors import DrafterActor

    drafter = DrafterActor(engine, cluster.drafter, secret=speculation_secret(), host=host, port=port,
                           branch_budget=cluster.branch_budget)
    print(f"serving the speculation channel on {drafter.address()}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    drafter.server.stop(grace=1.0).wait()
    print("drafter stopped", file=sys.stderr)
    return 0
