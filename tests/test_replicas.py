"""Engine replicas as Ray actors on the session's local Ray cluster: routing, streaming through the router,
cancellation, scaling from 1 to 2 replicas and back while requests run, with no request dropped, and a replica
that is a whole Mirror-SD pipeline."""

import threading

import grpc
import pytest
import ray

from helpers import wait_until
from mirrorspec.cluster.config import ClusterConfig, ProjectConfig, RoleConfig
from mirrorspec.cluster.replicas import (ReplicaActor, ReplicaLost, ReplicaRouter, actor_replica,
                                         pipeline_replica)
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos import generation_pb2_grpc as pb_grpc
from mirrorspec.serving.engine_loop import QueueFull
from mirrorspec.serving.generation_service import GenerationService, Limits, ServedModel
from mirrorspec.serving.grpc_server import GenerationServer, ServerLimits, ServerSecurity

pytestmark = pytest.mark.real_model

ENGINE = EngineConfig(drafter="default", max_batch=2, threads=1)
SPEC = SpecParams(method="chain", gamma=3)


@pytest.fixture(scope="module")
def tokenizer():
    from mirrorspec.workers.models import load_tokenizer, resolve_model_dir

    return load_tokenizer(resolve_model_dir("default", "target"))


def start(index: int, max_in_flight: int = 16):
    return actor_replica(ray.remote(ReplicaActor).options(num_cpus=1, max_concurrency=32).remote(
        ENGINE, max_in_flight=max_in_flight))


def start_mirror_pipeline(index: int):
    """A replica that is a whole pipeline: the drafter's actor and the target's, half a core each."""
    half = RoleConfig(resources={"CPU": 0.5}, threads=1)
    project = ProjectConfig(engine=ENGINE, cluster=ClusterConfig(target=half, drafter=half))
    return pipeline_replica(project, max_in_flight=16, concurrency=32)


def prompt(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def test_scaling_up_and_down_during_a_load_run_drops_nothing(ray_cluster, tokenizer):
    router = ReplicaRouter(start, 1)
    try:
        texts = [f"Write one sentence about the number {i}." for i in range(10)]
        outputs: dict[int, list[int]] = {}
        running_on: dict[int, int] = {}  # request -> replica index, once its first tokens came back
        errors: list[BaseException] = []

        def client(i: int, spec: SpecParams) -> None:
            try:
                last = None
                handle = router.submit(prompt(tokenizer, texts[i]), SamplingParams(max_new_tokens=24), spec)
                for last in handle:
                    running_on.setdefault(i, handle.replica.index)
                outputs[i] = last.token_ids
            except BaseException as exc:  # noqa: BLE001 - every failure is a dropped request
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i, SPEC)) for i in range(10)]
        for t in threads[:5]:
            t.start()
        router.scale(2)  # while the first five run
        assert router.replicas == 2
        for t in threads[5:]:
            t.start()
        wait_until(lambda: 1 in running_on.values(), 60, "nothing runs on the new replica")
        router.scale(1)  # the new replica retires with requests in flight: it finishes them first
        for t in threads:
            t.join(timeout=300)
        assert not errors and sorted(outputs) == list(range(10))
        wait_until(lambda: router.retirements, 60, "the replica did not retire")
        ((_, held),) = router.retirements
        assert held > 0  # it did hold requests when it was asked to go, and finished them
        # Every answer is the target's own greedy answer: `ar` on the remaining replica gives the same tokens.
        chained, outputs = dict(outputs), {}
        threads = [threading.Thread(target=client, args=(i, SpecParams(method="ar"))) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors and outputs == chained
        # And on a replica that is a whole Mirror-SD pipeline (drafter in its own actor), `ar` and `mirror` too.
        pipelines = ReplicaRouter(start_mirror_pipeline, 1)
        try:
            for i, method in ((0, "ar"), (7, "mirror")):
                last = None
                for last in pipelines.submit(prompt(tokenizer, texts[i]), SamplingParams(max_new_tokens=24),
                                             SpecParams(method=method, gamma=3)):
                    pass
                assert last.token_ids == chained[i], (i, method)
                assert (last.stats.drafted > 0) == (method == "mirror")
        finally:
            pipelines.shutdown()
    finally:
        router.shutdown()


def test_bad_requests_full_replicas_and_a_dead_replica_come_back_as_errors(ray_cluster, tokenizer):
    router = ReplicaRouter(lambda i: start(i, max_in_flight=1), 1)
    try:
        with pytest.raises(InvalidRequestError, match="^max_new_tokens:"):
            router.submit([1, 2, 3], SamplingParams(max_new_tokens=5000), SPEC)
        held = router.submit(prompt(tokenizer, "Count to ten."), SamplingParams(max_new_tokens=40), SPEC)
        with pytest.raises(QueueFull):
            router.submit(prompt(tokenizer, "Hi"), SamplingParams(max_new_tokens=4), SPEC)
        held.cancel()
        last = None
        for last in held:
            pass
        assert last.finished and last.finish_reason == "cancelled"
        assert router.load()["in_flight"] == 0
        # A replica that dies (its process killed) fails its request as retryable; a replacement serves the next.
        doomed = router.submit(prompt(tokenizer, "Count to twenty."), SamplingParams(max_new_tokens=40), SPEC)
        ray.kill(doomed.replica.actor)
        with pytest.raises(ReplicaLost, match="died with this request in flight"):
            for _ in doomed:
                pass
        wait_until(lambda: router.load()["up"], 120, period_s=0.5)  # down until the replacement has loaded
        # The same over gRPC: a stream whose replica dies mid-way ends UNAVAILABLE (a client retries that).
        server = GenerationServer(
            GenerationService(router, ServedModel("smol", tokenizer, len(tokenizer), 2048, None, ("chain",)),
                              sampling=SamplingParams(max_new_tokens=16), spec=SPEC, limits=Limits()),
            host="127.0.0.1", port=0, security=ServerSecurity(), limits=ServerLimits(), is_up=lambda: True)
        try:
            stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(server.address))
            stream = stub.GenerateStream(pb.SingleGenerationRequest(
                request=pb.GenerationRequest(text="Count to twenty."),
                params=pb.Parameters(chat=True, stopping=pb.StoppingCriteria(max_new_tokens=40, min_new_tokens=40))),
                timeout=120)
            next(stream)
            ray.kill(router._live[0].actor)
            with pytest.raises(grpc.RpcError) as err:
                list(stream)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "died" in err.value.details()
        finally:
            server.stop(0)
        wait_until(lambda: router.load()["up"], 120, period_s=0.5)
        last = None
        for last in router.submit(prompt(tokenizer, "Hi"), SamplingParams(max_new_tokens=4), SPEC):
            pass
        assert last.finished and last.token_ids and router.replicas == 1
    finally:
        router.shutdown()


def test_the_autoscaler_grows_with_the_queue_and_shrinks_when_idle(ray_cluster, tokenizer):
    from mirrorspec.cluster.config import AutoscalePolicy
    from mirrorspec.cluster.replicas import Autoscaler

    router = ReplicaRouter(lambda i: start(i, max_in_flight=16), 1)
    router.autoscaler = Autoscaler(router, AutoscalePolicy(min_replicas=1, max_replicas=2, target_waiting=1.0,
                                                           up_after_s=0.5, down_after_s=1.0, period_s=0.2),
                                   slots_per_replica=ENGINE.max_batch)
    try:
        # 8 long requests on 2 slots: 6 wait, so a second replica starts. They are long so that the queue stays
        # full however slow the machine is at loading the second replica's model; once it serves they are cancelled.
        handles = [router.submit(prompt(tokenizer, f"Tell a long story about {i} cats."),
                                 SamplingParams(max_new_tokens=256, ignore_eos=True), SPEC) for i in range(8)]
        wait_until(lambda: router.replicas == 2, 120, "the autoscaler did not start a second replica", 0.1)
        for handle in handles:
            handle.cancel()
        wait_until(lambda: router.replicas == 1, 60, "the autoscaler did not retire the idle replica", 0.2)
    finally:
        router.shutdown()
