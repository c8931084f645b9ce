"""The Ray Serve application as Serve's own CLI runs it: `serve run` on configs/serve.yaml (its ports moved to free
ones, its project config a small one) against the session's Ray cluster. TGIS's wire and grpc.health.v1 through
Serve's gRPC proxy, the OpenAI API and /metrics through Serve's HTTP proxy, both reaching the same EngineReplica;
answers equal the engine's `ar`; the bearer token, errors naming the field, scale by hand, a batch job through the
application's replicas, and Ctrl-C."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import openai
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

from helpers import wait_until
from mirrorspec.cluster import batch_job
from mirrorspec.cluster.serve_app import GRPC_SERVICERS
from mirrorspec.protos import admin_pb2, admin_pb2_grpc
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos import generation_pb2_grpc as pb_grpc

pytestmark = pytest.mark.real_model
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "serve-app-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app(ray_cluster, tmp_path_factory):
    """`serve run` of configs/serve.yaml, as shipped but for its ports and its project config."""
    tmp = tmp_path_factory.mktemp("serve_app")
    config = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    assert config["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICERS  # what `mirrorspec serve` starts
    grpc_port, http_port = free_port(), free_port()
    config["grpc_options"]["port"], config["http_options"]["port"] = grpc_port, http_port
    (tmp / "project.yaml").write_text(
        "engine: {drafter: default, max_batch: 2, threads: 1}\n"
        "speculation: {method: chain, gamma: 3}\n"
        "cluster: {target: {resources: {CPU: 1}, threads: 1}}\n"
        "serve: {token_env: MS_TOKEN, admin: true, max_new_tokens: 64, default_max_new_tokens: 16}\n")
    config["applications"][0]["args"]["config"] = str(tmp / "project.yaml")
    # The replicas read serve.token_env where they run: the cluster's environment, or the application's own.
    config["applications"][0]["runtime_env"] = {"env_vars": {"MS_TOKEN": TOKEN}}
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    from ray import serve

    serve.shutdown()  # a Serve left on the session's cluster by an earlier failed test would keep its own proxies
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    log = open(tmp / "serve.log", "w")  # a file, not a pipe nobody reads until the end (it could fill and block)
    # Ctrl-C reaches `serve run` as a terminal's would even when this suite runs in the background (`make test &`),
    # where SIGINT comes ignored and Python then never raises the KeyboardInterrupt that serve run shuts down on.
    proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(tmp / "serve.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    http = f"http://127.0.0.1:{http_port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp / "serve.log").read_text()
        try:
            return urllib.request.urlopen(f"{http}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_until(up, 300, "the application did not come up", 1.0)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        yield channel, http, proc
        channel.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # serve run deletes the application and shuts Serve down
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def generate(stub, text: str, method=None, **stopping) -> pb.GenerationResponse:
    params = pb.Parameters(stopping=pb.StoppingCriteria(**stopping), response=pb.ResponseOptions(
        generated_tokens=True, token_logprobs=True))
    if method is not None:
        params.speculation.method = method
    return stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text=text)], params=params),
                         metadata=AUTH, timeout=120).responses[0]


def test_tgis_wire_health_and_admin_through_serves_grpc_proxy(app):
    channel, _, _ = app
    stub = pb_grpc.GenerationServiceStub(channel)
    info = stub.ModelInfo(pb.ModelInfoRequest(), metadata=AUTH, timeout=60)
    assert info.model_id == "SmolLM2-135M-Instruct" and info.replicas == 1
    # Exact through Serve: tree (the default) gives the target's own greedy tokens and logprobs, as `ar` does.
    chained = generate(stub, "Name three colours.", max_new_tokens=24)
    plain = generate(stub, "Name three colours.", pb.AR, max_new_tokens=24)
    assert chained.token_ids == plain.token_ids and chained.text == plain.text and chained.generated_token_count
    assert [t.logprob for t in chained.tokens] == [t.logprob for t in plain.tokens]
    assert chained.speculation.target_forwards < plain.speculation.target_forwards
    streamed = list(stub.GenerateStream(pb.SingleGenerationRequest(
        request=pb.GenerationRequest(text="Name three colours."),
        params=pb.Parameters(stopping=pb.StoppingCriteria(max_new_tokens=24))), metadata=AUTH, timeout=120))
    assert len(streamed) > 1 and "".join(m.text for m in streamed) == chained.text
    assert stub.Tokenize(pb.BatchedTokenizeRequest(requests=[pb.TokenizeRequest(text="Hello world")]),
                         metadata=AUTH, timeout=60).responses[0].token_count == 2
    # Errors keep their status and name the field; without the token, UNAUTHENTICATED; health needs none.
    with pytest.raises(grpc.RpcError) as err:
        generate(stub, "Hi", max_new_tokens=5000)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("params.stopping.max_new_tokens"), err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # a stream refused before its first message keeps its status too
        list(stub.GenerateStream(pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Hi"), params=pb.Parameters(
            method=pb.SAMPLE, sampling=pb.SamplingParameters(top_p=7))), metadata=AUTH, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "params.sampling.top_p" in err.value.details()
    for call in (lambda: stub.ModelInfo(pb.ModelInfoRequest(), timeout=60),
                 lambda: list(stub.GenerateStream(pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Hi")),
                                                  timeout=60))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=60)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # Scale by hand maps onto Serve's replica count: asking for 0 more reads the load.
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    assert admin.Scale(admin_pb2.ScaleRequest(replicas=0), metadata=AUTH, timeout=60).replicas == 1
    with pytest.raises(grpc.RpcError) as err:
        admin.Scale(admin_pb2.ScaleRequest(replicas=3), metadata=AUTH, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "CPU" in err.value.details()


def test_openai_api_and_metrics_through_serves_http_proxy(app):
    channel, http, _ = app
    client = openai.OpenAI(base_url=f"{http}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    question = [{"role": "user", "content": "Name three colours."}]
    chat = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=question, max_tokens=24,
                                          temperature=0)
    # The same replica answers gRPC's `messages` with the same tokens.
    grpc_reply = pb_grpc.GenerationServiceStub(channel).Generate(pb.BatchedGenerationRequest(
        requests=[pb.GenerationRequest(messages=[pb.ChatMessage(role="user", content="Name three colours.")])],
        params=pb.Parameters(stopping=pb.StoppingCriteria(max_new_tokens=24))), metadata=AUTH, timeout=120)
    assert chat.choices[0].message.content == grpc_reply.responses[0].text
    assert chat.choices[0].model_extra["speculation"]["target_forwards"] >= 1
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=question, max_tokens=24, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="SmolLM2-135M-Instruct", prompt="Hi", max_tokens=4, top_p=7)
    assert err.value.body["param"] == "top_p"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{http}/v1", api_key="wrong", max_retries=0).models.list()
    scraped = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
    samples = {x.name: x.value for family in text_string_to_metric_families(scraped) for x in family.samples
               if x.labels.get("model_name") == "SmolLM2-135M-Instruct"}
    assert samples["mirrorspec:time_to_first_token_seconds_count"] >= 4  # both protocols, one ingress
    assert samples["mirrorspec:num_replicas"] == 1.0

    def serves_own() -> set[str]:  # Ray Serve's series next to the engine's (the agent exports them periodically)
        text = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
        return {family.name for family in text_string_to_metric_families(text)}

    wait_until(lambda: {"ray_serve_num_http_requests", "ray_serve_num_grpc_requests"} <= serves_own(), 60,
               "Serve's own request counters are not on /metrics", 2.0)


def test_a_batch_job_with_serve_runs_on_the_applications_replicas(app, tmp_path):
    """`batch_job --serve` finds the running application and sends its rows to the same EngineReplica: the
    answers are the ones gRPC gets for the same prompts."""
    channel, _, _ = app
    prompts = [f"Name a fruit that starts with the letter {letter}." for letter in "ABC"]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n"
                                                 for i, p in enumerate(prompts)))
    summary = batch_job.run(batch_job.build_parser().parse_args([
        "--input", str(tmp_path / "rows.jsonl"), "--output", str(tmp_path / "out"), "--serve", "--method", "ar",
        "--max-new-tokens", "8", "--replicas", "1", "--batch-size", "3", "--merge"]))
    assert summary["answered"] == 3 and summary["replicas"] == "the running application's"
    stub = pb_grpc.GenerationServiceStub(channel)
    for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines():
        answer = json.loads(line)
        reply = generate(stub, prompts[int(answer["id"])], pb.AR, max_new_tokens=8)
        assert answer["token_ids"] == list(reply.token_ids) and answer["text"] == reply.text


def test_ctrl_c_stops_the_application_and_serve(app, ray_cluster):
    _, http, proc = app
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{http}/health", timeout=5)
    with pytest.raises(ValueError):  # Serve's controller is gone from the cluster
        ray_cluster.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def test_without_an_application_batch_jobs_and_mirrorspec_serve_start_their_own(ray_cluster, tmp_path):
    """Serve is down (the test above stopped it). `batch_job --serve --replicas 1` deploys replicas for itself and
    removes them (and Serve) when done; `mirrorspec serve` with serve.ingress: serve builds the same application
    behind Serve's proxies on free ports, answers the same prompts with the same tokens, and on a signal deletes
    it and shuts down the Serve it started."""
    from mirrorspec.cluster.serve_replicas import serve_running

    assert not serve_running()
    project = tmp_path / "project.yaml"
    project.write_text("engine: {max_batch: 2, threads: 1}\nspeculation: {method: ar}\n"
                       "cluster: {target: {resources: {CPU: 1}, threads: 1}}\n"
                       "serve: {ingress: serve, port: 0, http_port: 0, max_new_tokens: 64,"
                       " default_max_new_tokens: 8}\n")
    prompts = ["Name a colour.", "Name an animal."]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n"
                                                 for i, p in enumerate(prompts)))
    summary = batch_job.run(batch_job.build_parser().parse_args([
        "--config", str(project), "--input", str(tmp_path / "rows.jsonl"), "--output", str(tmp_path / "out"),
        "--serve", "--replicas", "1", "--max-new-tokens", "8", "--batch-size", "2", "--merge"]))
    assert summary["answered"] == 2 and summary["replicas"] == 1 and not serve_running()
    batch_answers = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]

    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mirrorspec"), "serve", "--config", str(project)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once the application is ready
        assert "through Ray Serve's proxies" in line, line
        address = line.split("fmaas.GenerationService on ")[1].split(";")[0]
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.GenerationServiceStub(channel)
        for answer in batch_answers:
            reply = stub.Generate(pb.BatchedGenerationRequest(
                requests=[pb.GenerationRequest(text=prompts[int(answer["id"])])],
                params=pb.Parameters(stopping=pb.StoppingCriteria(max_new_tokens=8))), timeout=120).responses[0]
            assert list(reply.token_ids) == answer["token_ids"]
        channel.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0 and not serve_running()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
