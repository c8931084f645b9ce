"""Engine replicas as a Ray Serve deployment on the session's local Ray cluster: streaming through Serve's
handle, cancellation, Serve's queue limit, scaling from 1 to 2 replicas and back while requests run with no
request dropped, a replica that dies, and Serve's autoscaling. (Replicas that are whole Mirror-SD pipelines in
their own placement groups: tests/test_generation_service.py's `mirrorspec serve` test.)"""

import threading

import grpc
import pytest
import ray

from helpers import wait_until
from mirrorspec.cluster.config import ClusterConfig, ProjectConfig, RoleConfig, ServeConfig
from mirrorspec.cluster.serve_replicas import deploy_replicas
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos import generation_pb2_grpc as pb_grpc
from mirrorspec.serving.engine_loop import QueueFull
from mirrorspec.serving.generation_service import GenerationService, ServedModel
from mirrorspec.serving.grpc_server import GenerationServer, ServerLimits, ServerSecurity
from mirrorspec.serving.tgis_wire import Limits

pytestmark = pytest.mark.real_model

ENGINE = EngineConfig(drafter="default", max_batch=2, threads=1)
SPEC = SpecParams(method="chain", gamma=3)
ONE_CORE = RoleConfig(resources={"CPU": 1}, threads=1)


def project(**serve) -> ProjectConfig:
    return ProjectConfig(engine=ENGINE, speculation=SPEC, cluster=ClusterConfig(target=ONE_CORE),
                         serve=ServeConfig(**serve).validate())


@pytest.fixture(scope="module")
def tokenizer():
    from mirrorspec.workers.models import load_tokenizer, resolve_model_dir

    return load_tokenizer(resolve_model_dir("default", "target"))


def prompt(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def last_of(request):
    last = None
    for last in request:
        pass
    return last


def test_scaling_up_and_down_during_a_load_run_drops_nothing(ray_cluster, tokenizer):
    backend = deploy_replicas(project(max_ongoing_requests=4))
    try:
        texts = [f"Write one sentence about the number {i}." for i in range(10)]
        outputs: dict[int, list[int]] = {}
        replica_of: dict[int, str] = {}
        errors: list[BaseException] = []

        def client(i: int, spec: SpecParams) -> None:
            try:
                request = backend.submit(prompt(tokenizer, texts[i]), SamplingParams(max_new_tokens=24), spec)
                replica_of[i] = request.replica
                outputs[i] = last_of(request).token_ids
            except BaseException as exc:  # noqa: BLE001 - every failure is a dropped request
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i, SPEC)) for i in range(10)]
        for t in threads[:5]:
            t.start()
        backend.scale(2)  # while the first five run
        assert backend.replicas == 2
        for t in threads[5:]:
            t.start()
        wait_until(lambda: len(set(replica_of.values())) == 2, 120, "nothing ran on the new replica")
        backend.scale(1)  # one replica retires with requests in flight: Serve lets it finish them first
        for t in threads:
            t.join(timeout=300)
        assert not errors and sorted(outputs) == list(range(10))
        # Every answer is the target's own greedy answer: `ar` on the remaining replica gives the same tokens.
        chained, outputs = dict(outputs), {}
        threads = [threading.Thread(target=client, args=(i, SpecParams(method="ar"))) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors and outputs == chained and backend.load()["in_flight"] == 0
    finally:
        backend.shutdown()


def test_bad_requests_full_replicas_and_a_dead_replica_come_back_as_errors(ray_cluster, tokenizer):
    backend = deploy_replicas(project(max_ongoing_requests=1, max_queued_requests=1))
    held = None
    try:
        with pytest.raises(InvalidRequestError, match="^max_new_tokens:"):
            backend.submit([1, 2, 3], SamplingParams(max_new_tokens=5000), SPEC)
        # A burst of four at once: one slot and one queue place, so at most two are taken and the others refused.
        outcomes: list[str] = []
        start = threading.Barrier(4)

        def burst(i: int) -> None:
            start.wait()
            try:
                last_of(backend.submit(prompt(tokenizer, f"Say {i}."), SamplingParams(max_new_tokens=4), SPEC))
                outcomes.append("served")
            except QueueFull:
                outcomes.append("refused")

        threads = [threading.Thread(target=burst, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(outcomes) == 4 and 1 <= outcomes.count("served") <= 2, outcomes
        # Long enough to hold the one slot however slow the machine is (it is cancelled below).
        held = backend.submit(prompt(tokenizer, "Count to ten."), SamplingParams(max_new_tokens=1000,
                                                                                 ignore_eos=True), SPEC)
        queued = threading.Thread(target=lambda: last_of(backend.submit(prompt(tokenizer, "Hi"),
                                                                        SamplingParams(max_new_tokens=4), SPEC)))
        queued.start()  # waits in Serve's queue for the one slot
        wait_until(lambda: backend.load()["num_requests_waiting"] == 1, 30, "the second request did not queue", 0.2)
        with pytest.raises(QueueFull, match="max_queued_requests"):
            backend.submit(prompt(tokenizer, "Hello"), SamplingParams(max_new_tokens=4), SPEC)
        held.cancel()
        queued.join(timeout=120)
        assert backend.load()["in_flight"] == 0
        # A replica that dies (its process killed) mid-stream fails its request as retryable (ReplicaLost: gRPC's
        # UNAVAILABLE, which a client retries); Serve starts a replacement.
        server = GenerationServer(
            GenerationService(backend, ServedModel("smol", tokenizer, len(tokenizer), 2048, None, ("chain",)),
                              sampling=SamplingParams(max_new_tokens=16), spec=SPEC, limits=Limits()),
            host="127.0.0.1", port=0, security=ServerSecurity(), limits=ServerLimits(), is_up=lambda: True)
        try:
            stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(server.address))
            stream = stub.GenerateStream(pb.SingleGenerationRequest(
                request=pb.GenerationRequest(text="Count to twenty."),
                params=pb.Parameters(chat=True, stopping=pb.StoppingCriteria(max_new_tokens=40, min_new_tokens=40))),
                timeout=120)
            next(stream)
            (name,) = [n for n in ray.util.list_named_actors(all_namespaces=True)
                       if n["namespace"] == "serve" and "EngineReplica" in n["name"]]
            ray.kill(ray.get_actor(name["name"], namespace="serve"))
            with pytest.raises(grpc.RpcError) as err:
                list(stream)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "died" in err.value.details()
        finally:
            server.stop(0)
        wait_until(lambda: backend.replicas == 1, 180, "Serve did not replace the dead replica", 0.5)
        last = last_of(backend.submit(prompt(tokenizer, "Hi"), SamplingParams(max_new_tokens=4), SPEC))
        assert last.finished and last.token_ids
    finally:
        if held is not None:
            held.cancel()  # also when an assertion failed with it running: the shutdown below need not wait
        backend.shutdown()


def test_serves_autoscaling_grows_with_the_queue_and_shrinks_when_idle(ray_cluster, tokenizer):
    backend = deploy_replicas(project(max_ongoing_requests=4, autoscaling_config={
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0.5,
        "downscale_delay_s": 2, "metrics_interval_s": 0.2, "look_back_period_s": 1}))
    requests = []
    try:
        # 6 long requests for one replica of 4: some ongoing above the target, so Serve starts a second replica.
        # They are long so that the load stays however slow the machine is at loading its model; then cancelled.
        starters = [threading.Thread(target=lambda i=i: requests.append(backend.submit(
            prompt(tokenizer, f"Tell a long story about {i} cats."), SamplingParams(max_new_tokens=256,
                                                                                      ignore_eos=True), SPEC)))
            for i in range(6)]
        for t in starters:
            t.start()
        wait_until(lambda: backend.replicas == 2, 180, "Serve did not start a second replica", 0.2)
        for t in starters:
            t.join(timeout=120)
        for request in requests:
            request.cancel()
        wait_until(lambda: backend.replicas == 1, 120, "Serve did not retire the idle replica", 0.2)
    finally:
        for request in requests:
            request.cancel()
        backend.shutdown()
