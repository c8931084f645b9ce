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
