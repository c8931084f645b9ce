"""Every socket of the embedded Ray cluster listens on loopback only (cluster/ray_cluster.py `connect`): its GCS,
raylet, agents, workers and this driver, measured on the live cluster of the test session."""

import ipaddress

import psutil  # installed with ray


def is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_the_embedded_cluster_listens_on_loopback_only(ray_cluster):
    ray_cluster.get(ray_cluster.remote(lambda: 1).remote())  # a worker is up, not only GCS and raylet
    tree = {psutil.Process().pid} | {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in tree]
    names = {psutil.Process(c.pid).name() for c in listening}
    assert {"gcs_server", "raylet"} <= names, names
    exposed = [(psutil.Process(c.pid).name(), c.laddr) for c in listening if not is_loopback(c.laddr.ip)]
    assert not exposed
