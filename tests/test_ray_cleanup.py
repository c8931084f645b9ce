"""An embedded Ray cluster ends with the process that started it, even after a kill -9 (cluster/reaper.py): its
GCS, raylet, agents and actors are all gone within seconds, where Ray's agents alone would keep their ports for a
minute or more."""

import os
import signal
import subprocess
import sys
import textwrap

import psutil

from helpers import wait_until
from mirrorspec.cluster.reaper import alive

OWNER = textwrap.dedent("""
    import ray, sys, time
    from mirrorspec.cluster.config import ClusterConfig
    from mirrorspec.cluster.ray_cluster import connect

    connect(ClusterConfig(num_cpus=1))

    @ray.remote(num_cpus=0)
    class Holder:
        def pid(self):
            import os
            return os.getpid()

    holder = Holder.remote()
    print(ray.get(holder.pid.remote()), flush=True)
    time.sleep(600)
""")


def test_a_killed_owner_leaves_no_ray_process_behind():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    try:
        actor = int(owner.stdout.readline())  # the cluster is up and runs an actor
        started = {p.pid: p for p in psutil.Process(owner.pid).children(recursive=True)}
        names = {p.name() for p in started.values()}
        assert {"gcs_server", "raylet"} <= names and actor in started, names
        reapers = [p for p in started.values() if "mirrorspec.cluster.reaper" in " ".join(p.cmdline())]
        assert len(reapers) == 1
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)

        def left():  # a process that exits between two reads of /proc counts as gone (alive catches it)
            return [p for p in started.values() if alive(p)]

        wait_until(lambda: not left(), 20, "Ray processes outlived their owner")
    finally:
        if owner.poll() is None:
            owner.kill()
