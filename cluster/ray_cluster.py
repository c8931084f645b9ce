"""Connecting to a Ray cluster, or starting an embedded local one; every socket stays on 127.0.0.1 locally."""

from __future__ import annotations

import logging
import os

from mirrorspec.cluster import reaper
from mirrorspec.cluster.config import ClusterConfig

logger = logging.getLogger(__name__)
# Ray 2.60 turns token auth on for a new local cluster and says so on every start; the embedded cluster wants
# exactly that, so the notice is noise to a user of this project.
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _not_the_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def connect(cluster: ClusterConfig) -> None:
    """`cluster.address` (or $RAY_ADDRESS) -> join that cluster; otherwise start an embedded one here."""
    # Ray replaces 127.0.0.1 by the routable interface unless told not to (PLATFORM.md): keep loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                                "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}}
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return
    if not logging.getLogger("mirrorspec").isEnabledFor(logging.INFO):  # --verbose keeps Ray's notice
        logging.getLogger(RAY_AUTH_LOGGER).addFilter(_not_the_auth_notice)
    # address="local": a new cluster of this process's own, never one that `ray start` left on this machine
    ray.init(address="local", num_cpus=cluster.num_cpus, resources=dict(cluster.resources) or None,
             include_dashboard=False, _node_ip_address="127.0.0.1", runtime_env=runtime_env, log_to_driver=False,
             configure_logging=False)
    reaper.watch(os.getpid())  # the embedded cluster ends with this process, even after a kill -9
