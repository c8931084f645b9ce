"""`mirrorspec cluster up` / `down`: a Ray cluster of this project's own on this machine, for `ray job submit`.

A bare `ray start --head` takes Ray's default ports, so it collides with any other Ray on the machine, and `ray
stop` stops every Ray cluster the user runs. `up` runs `ray start --head --block` on free loopback ports as a
process of its own, waits until the job API answers, records it, and prints the two variables a shell exports
(`eval "$(mirrorspec cluster up)"`): RAY_ADDRESS (the job API) and RAY_AUTH_MODE=token. Token auth stays on, as Ray
2.60 starts it: `ray start` keeps the token in ~/.ray/auth_token, and clients read it there once the mode says
token. `down` stops that process and every process it started, by pid and start time (cluster/reaper.py), and
nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from mirrorspec.cluster import reaper
from mirrorspec.errors import InvalidRequestError
from mirrorspec.workers.default_model import cache_dir
from mirrorspec.workers.tensor_parallel import free_port

READY_TIMEOUT_S = 120.0
PORT_FLAGS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port",
              "--ray-client-server-port")


def state_file() -> Path:
    """Where `up` records its cluster: $MIRRORSPEC_CLUSTER_STATE, else the cache folder."""
    return Path(os.environ.get("MIRRORSPEC_CLUSTER_STATE") or cache_dir() / "ray-cluster.json")


def cluster_env() -> dict[str, str]:
    # Ray replaces 127.0.0.1 by the routable interface unless told not to (PLATFORM.md); token auth as Ray's default.
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


def up(num_cpus: int | None) -> dict:
    """Start the cluster (refused if this project's cluster already runs); its record."""
    running = _running()
    if running is not None:
        raise InvalidRequestError("cluster", f"already up (pid {running['pid']}, {running['address']}); "
                                             f"`mirrorspec cluster down` first")
    ports = {flag: free_port() for flag in PORT_FLAGS}
    command = [ray_bin(), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               *(f"{flag}={port}" for flag, port in ports.items()),
               *([f"--num-cpus={num_cpus}"] if num_cpus is not None else [])]
    log = state_file().with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(command, env=cluster_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                   start_new_session=True)
    record = {"pid": process.pid, "started": psutil.Process(process.pid).create_time(),
              "address": f"http://127.0.0.1:{ports['--dashboard-port']}", "gcs": f"127.0.0.1:{ports['--port']}",
              "log": str(log)}
    try:
        _wait_ready(record, process)
    except BaseException:
        _stop(process.pid, record["started"])
        raise
    state_file().write_text(json.dumps(record))
    return record


def down(crash: bool = False) -> dict | None:
    """Stop the recorded cluster and what it started (`crash`: SIGKILL every process at once, as a machine crash
    would); its record, or None when none was up."""
    record = _running()
    if record is not None:
        _stop(record["pid"], record["started"], grace_s=0.0 if crash else reaper.GRACE_S)
        _forget_address(record["gcs"])
    state_file().unlink(missing_ok=True)
    return record


def _forget_address(gcs: str) -> None:
    """`ray start` notes its address for `ray.init()` to join by default (as `ray stop` would, drop that note when it
    names this cluster, so that nothing tries to join a cluster that is gone)."""
    note = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if note.read_text().strip() == gcs:
            note.unlink()
    except OSError:
        pass


def exports(record: dict) -> str:
    return f"export RAY_ADDRESS={record['address']} RAY_AUTH_MODE=token"


def _running() -> dict | None:
    try:
        record = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    return record if reaper.still_ours(record["pid"], record["started"]) is not None else None


def _wait_ready(record: dict, process: subprocess.Popen) -> None:
    """Until a job can be placed: `ray job submit` of a no-op job (`true`) is accepted, which needs the job API and
    the head's dashboard agent (before it registers, submissions fail with "No available agent to submit job")."""
    probe = [ray_bin(), "job", "submit", "--no-wait", "--", "true"]
    env = {**cluster_env(), "RAY_ADDRESS": record["address"]}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise InvalidRequestError("cluster", f"ray start exited with {process.returncode}; see {record['log']}")
        answer = subprocess.run(probe, env=env, capture_output=True, text=True)
        if answer.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise InvalidRequestError("cluster", f"not ready after {READY_TIMEOUT_S:.0f} s (`ray job submit`: "
                                                 f"{answer.stderr.strip()[-300:]}); see {record['log']}")
        time.sleep(1.0)


def ray_bin() -> str:
    """The `ray` command of this environment."""
    return str(Path(sys.executable).with_name("ray"))


def _stop(pid: int, started: float, grace_s: float = reaper.GRACE_S) -> None:
    owner = reaper.still_ours(pid, started)
    if owner is None:
        return
    started_by_it = reaper.descendants(owner, me=os.getpid())
    reaper.reap({pid: started, **started_by_it}, grace_s)
