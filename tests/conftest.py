import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray cluster (2 CPUs, loopback only) for the whole test session."""
    import ray

    from mirrorspec.cluster.config import ClusterConfig
    from mirrorspec.cluster.ray_cluster import connect

    connect(ClusterConfig(num_cpus=2))
    yield ray
    ray.shutdown()


_prebuild: "subprocess.Popen | None" = None


def pytest_collection_finish(session):
    """With tensor-parallel tests selected: build DeepSpeed's shared-memory all-reduce op now, at the lowest CPU
    priority, while the other tests run. Its first use JIT-compiles it (about 50 s on two cores, cached in
    ~/.cache/torch_extensions); the ranks then load the built op instead of compiling it while the suite waits."""
    global _prebuild
    if any(item.module.__name__ == "test_tensor_parallel" for item in session.items):
        import subprocess
        import sys

        _prebuild = subprocess.Popen([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; "
                                      "build_shm_op()"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: os.nice(19))


def pytest_sessionfinish(session):
    """Let the build finish rather than kill it: a compile killed midway leaves torch's build lock behind, and
    the next run's ranks would wait on it for ever."""
    if _prebuild is not None:
        _prebuild.wait(timeout=600)
