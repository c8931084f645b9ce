"""Ends an embedded Ray cluster's processes when the process that started it dies, however it dies.

A normal exit calls ray.shutdown(). After a kill -9 nothing runs in the dead process: Ray's GCS, raylet and actors
notice within seconds, but its dashboard and runtime-env agents keep their ports for a minute or more. The reaper is
a small process the owner starts next to the cluster (`watch`); it notes the owner's descendants every second and,
once the owner is gone, ends the ones it noted that still run (SIGTERM, then SIGKILL after a grace period). Each is
matched by pid and start time, so a recycled pid is never touched: it stops only what the owner started.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

POLL_S = 1.0
GRACE_S = 3.0


def watch(owner: int) -> subprocess.Popen:
    """Start a reaper for `owner`'s descendants (its own session: a Ctrl-C aimed at the owner does not reach it)."""
    return subprocess.Popen([sys.executable, "-m", "mirrorspec.cluster.reaper", str(owner)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def descendants(owner: psutil.Process, me: int) -> dict[int, float]:
    """pid -> start time of every live descendant of `owner` but this reaper."""
    try:
        return {p.pid: p.create_time() for p in owner.children(recursive=True) if p.pid != me}
    except psutil.Error:  # the owner, or a child, went while being listed
        return {}


def still_ours(pid: int, started: float) -> psutil.Process | None:
    try:
        process = psutil.Process(pid)
        return process if process.create_time() == started else None
    except psutil.Error:
        return None


def reap(noted: dict[int, float], grace_s: float = GRACE_S) -> None:
    """SIGTERM to each noted process still running, SIGKILL to those left after `grace_s` (0: SIGKILL at once,
    as a crash would)."""
    left = [p for p in (still_ours(pid, started) for pid, started in noted.items()) if p is not None]
    for process in left if grace_s else []:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def main(owner_pid: int) -> None:
    me = psutil.Process().pid
    try:
        owner = psutil.Process(owner_pid)
    except psutil.Error:
        return
    noted: dict[int, float] = {}
    while alive(owner):
        noted |= descendants(owner, me)
        time.sleep(POLL_S)
    reap(noted)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


if __name__ == "__main__":
    main(int(sys.argv[1]))
