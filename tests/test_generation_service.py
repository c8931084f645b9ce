"""The public GenerationService over a real gRPC server on 127.0.0.1, with a tiny random model that speaks the
SmolLM2 tokenizer: unary, streaming, cancellation, deadlines, time limits, auth, TLS, health, reflection, limits
and bad requests (each answered INVALID_ARGUMENT naming the field, while the server keeps serving)."""

import copy
import datetime
import ipaddress
import re
import threading
import urllib.request

import grpc
import pytest
import torch
import transformers
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from helpers import wait_until, worker
from mirrorspec.orchestration.engine import Engine
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import admin_pb2, admin_pb2_grpc
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos import generation_pb2_grpc as pb_grpc
from mirrorspec.serving.engine_loop import EngineLoop
from mirrorspec.serving.generation_service import AdminService, GenerationService, Limits, ServedModel
from mirrorspec.serving.grpc_server import GenerationServer, ServerLimits, ServerSecurity
from mirrorspec.workers.model_worker import ModelWorker
from mirrorspec.workers.models import LoadedModel, load_tokenizer, resolve_model_dir

TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def tiny_pair(tokenizer):
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
        models.append(LoadedModel(path=None, model=model.requires_grad_(False), tokenizer=tokenizer))
    return models


def tiny_engine_of(models, tokenizer, exact: bool = False) -> Engine:
    target, drafter = models
    return Engine(ModelWorker(target, max_slots=4, capacity=400, max_spec_nodes=64, exact=exact),
                  worker(drafter, 4, 400), tokenizer=tokenizer, eos_ids=[tokenizer.eos_token_id], max_model_len=300,
                  max_batch=2)


class Served:
    """One engine loop and one server; `stop()` tears both down."""

    def __init__(self, tokenizer, *, security=ServerSecurity(), limits=Limits(max_prompt_tokens=64,
                 max_new_tokens=64), max_in_flight=4, server_limits=ServerLimits(), models=None, exact=False):
        self.models = models or tiny_pair(tokenizer)
        tokenizer = self.models[0].tokenizer
        self.loop = EngineLoop(tiny_engine_of(self.models, tokenizer, exact), max_in_flight=max_in_flight)
        self.up = threading.Event()
        self.up.set()
        model = ServedModel("tiny", tokenizer, len(tokenizer), 300, "tiny-drafter", ("ar", "chain", "tree", "ngram"))
        service = GenerationService(self.loop, model, sampling=SamplingParams(max_new_tokens=16),
                                    spec=SpecParams(method="chain", gamma=3), limits=limits)
        self.server = GenerationServer(service, host="127.0.0.1", port=0, security=security, limits=server_limits,
                                       is_up=self.up.is_set, admin=AdminService(self.loop), health_period_s=0.05)

    def stop(self):
        self.server.stop(0)
        self.loop.stop(drain=False)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_dir("default", "target"))


@pytest.fixture(scope="module")
def served(tokenizer):
    s = Served(tokenizer, security=ServerSecurity(token=TOKEN))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stub(served):
    channel = grpc.insecure_channel(served.server.address)
    yield pb_grpc.GenerationServiceStub(channel)
    channel.close()


def params(**kw):
    """Parameters with max_new_tokens 12; `spec_method` is mirrorspec's speculation method (SpeculationParameters)."""
    stopping = pb.StoppingCriteria(max_new_tokens=kw.pop("max_new_tokens", 12), **kw.pop("stopping", {}))
    if "spec_method" in kw:
        kw.setdefault("speculation", pb.SpeculationParameters()).method = kw.pop("spec_method")
    return pb.Parameters(stopping=stopping, **kw)


def test_unary_batch_is_the_engine_output_for_every_method(stub, served, tokenizer):
    texts = ["Hello there", "Why is the sky blue?", "1 2 3"]
    # the served engine belongs to its loop's thread: the reference comes from an engine of its own
    engine = tiny_engine_of(served.models, tokenizer)
    reference = engine.generate(texts, SamplingParams(max_new_tokens=12), SpecParams(method="ar"))
    for method, name in ((pb.AR, "ar"), (pb.CHAIN, "chain"), (pb.TREE, "tree"), (pb.METHOD_DEFAULT, "chain")):
        reply = stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text=t) for t in texts],
                                                          params=params(spec_method=method)), metadata=AUTH)
        assert [list(r.token_ids) for r in reply.responses] == [o.token_ids for o in reference]
        # The statistics on the wire are the engine's: the same method in process counts the same.
        same = engine.generate(texts, SamplingParams(max_new_tokens=12), SpecParams(method=name, gamma=3))
        for r, ref, local in zip(reply.responses, reference, same):
            assert r.text == ref.text and r.generated_token_count == len(ref.token_ids)
            assert r.stop_reason in (pb.MAX_TOKENS, pb.EOS_TOKEN)
            s = local.stats
            assert (r.speculation.target_forwards, r.speculation.drafts, r.speculation.drafted,
                    r.speculation.accepted) == (s.target_forwards, s.drafts, s.drafted, s.accepted)
            assert list(r.speculation.accepted_per_position) == s.accepted_per_position
            assert r.speculation.tau == pytest.approx(r.generated_token_count / r.speculation.target_forwards)
            assert (r.speculation.drafts > 0) == (name != "ar")


def test_streaming_sends_each_step_and_ends_with_the_stop_reason(stub):
    parts = list(stub.GenerateStream(pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Tell me"),
                                                                params=params(max_new_tokens=20)), metadata=AUTH))
    assert all(p.stop_reason == pb.NOT_FINISHED for p in parts[:-1]) and parts[-1].stop_reason != pb.NOT_FINISHED
    ids = [t for p in parts for t in p.token_ids]
    whole = stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="Tell me")],
                                                      params=params(max_new_tokens=20)), metadata=AUTH)
    assert ids == list(whole.responses[0].token_ids)
    assert "".join(p.text for p in parts) == whole.responses[0].text
    assert parts[-1].speculation.target_forwards >= 1


def test_cancel_and_deadline_free_the_slot_at_once(stub, served):
    stream = stub.GenerateStream(pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Go on"),
                                                            params=params(max_new_tokens=64)), metadata=AUTH)
    next(stream)
    stream.cancel()
    wait_until(lambda: served.loop.in_flight == 0)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Go on"),
                                                            params=params(max_new_tokens=64)),
                                 metadata=AUTH, timeout=0.05))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: served.loop.in_flight == 0)


def test_time_limit_ends_the_request_with_what_it_has(stub):
    reply = stub.Generate(pb.BatchedGenerationRequest(
        requests=[pb.GenerationRequest(text="Count")],
        params=params(max_new_tokens=64, stopping={"time_limit_millis": 1})), metadata=AUTH)
    assert reply.responses[0].stop_reason == pb.TIME_LIMIT
    assert reply.responses[0].generated_token_count < 64


def eos_early(models, tokenizer, prompt: str, at: int) -> None:
    """Make the models say EOS where the target would say its `at`-th token after `prompt` (greedy): the EOS row
    of each output head becomes a copy of that token's row, a little larger."""
    (out,) = tiny_engine_of(models, tokenizer).generate([prompt], SamplingParams(max_new_tokens=at + 1),
                                                        SpecParams(method="ar"))
    token = out.token_ids[at]
    with torch.no_grad():
        for loaded in models:
            head = loaded.model.lm_head.weight
            head[tokenizer.eos_token_id] = head[token] * 1.05


def test_min_new_tokens_holds_back_an_eos_that_comes_early(tokenizer):
    models = tiny_pair(tokenizer)
    eos_early(models, tokenizer, "Hi", at=3)
    served = Served(tokenizer, models=models)
    channel = grpc.insecure_channel(served.server.address)
    try:
        stub = pb_grpc.GenerationServiceStub(channel)

        def generate(**stopping):
            return stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="Hi")],
                                                             params=params(max_new_tokens=30, stopping=stopping)))

        free = generate().responses[0]
        assert free.stop_reason == pb.EOS_TOKEN and free.generated_token_count <= 4
        held = generate(min_new_tokens=30).responses[0]
        assert held.stop_reason == pb.MAX_TOKENS and held.generated_token_count == 30
        assert tokenizer.eos_token_id not in held.token_ids
    finally:
        channel.close()
        served.stop()


@pytest.mark.parametrize("request_, field", [
    (dict(requests=[pb.GenerationRequest(text="")]), "requests[0].text"),
    (dict(requests=[pb.GenerationRequest(text="ok"), pb.GenerationRequest(text="   ")]), "requests[1].text"),
    (dict(requests=[pb.GenerationRequest(text="word " * 200)]), "requests[0].text"),
    (dict(requests=[]), "requests"),
    (dict(model_id="gpt-9"), "model_id"),
    (dict(params=params(spec_method=17)), "params.speculation.method"),
    (dict(params=params(spec_method=pb.MIRROR)), "params.speculation.method"),
    (dict(params=params(method=5)), "params.method"),
    (dict(params=params(max_new_tokens=65)), "params.stopping.max_new_tokens"),
    (dict(params=params(stopping={"min_new_tokens": 40})), "params.stopping.min_new_tokens"),
    (dict(params=params(method=pb.SAMPLE, sampling=pb.SamplingParameters(top_p=1.5))), "params.sampling.top_p"),
    (dict(params=params(method=pb.SAMPLE, sampling=pb.SamplingParameters(temperature=-1))),
     "params.sampling.temperature"),
    (dict(params=params(method=pb.SAMPLE, sampling=pb.SamplingParameters(typical_p=0.5))),
     "params.sampling.typical_p"),
    (dict(params=params(decoding=pb.DecodingParameters(repetition_penalty=-2))),
     "params.decoding.repetition_penalty"),
    (dict(params=params(decoding=pb.DecodingParameters(regex="a+"))), "params.decoding.regex"),
    (dict(params=params(response=pb.ResponseOptions(generated_tokens=True, top_n_tokens=50))),
     "params.response.top_n_tokens"),
    (dict(adapter_id="lora-1"), "adapter_id"),
    (dict(params=params(speculation=pb.SpeculationParameters(tree_nodes=500), spec_method=pb.TREE)),
     "params.speculation.tree_nodes"),
    (dict(params=params(speculation=pb.SpeculationParameters(tree_topk=2**32 - 1), spec_method=pb.TREE)),
     "params.speculation.tree_topk"),
    (dict(params=params(stopping={"stop_sequences": [""]})), "params.stopping.stop_sequences"),
])
def test_bad_requests_name_the_field_and_the_server_keeps_serving(stub, request_, field):
    request = pb.BatchedGenerationRequest(**{"requests": [pb.GenerationRequest(text="ok")], **request_})
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request, metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()
    ok = stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="ok")], params=params()),
                       metadata=AUTH)
    assert ok.responses[0].generated_token_count >= 1


def test_malformed_utf8_names_the_field(served):
    channel = grpc.insecure_channel(served.server.address)
    raw = channel.unary_unary("/fmaas.GenerationService/GenerateStream",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
    text = b"\x12\x04ab\xff\xfe"  # GenerationRequest.text (field 2) = 4 bytes, not UTF-8
    message = b"\x1a" + bytes([len(text)]) + text  # SingleGenerationRequest.request (field 3)
    with pytest.raises(grpc.RpcError) as err:
        raw(message, metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "request.text: not valid UTF-8"
    for body in (message, b"\xff\xff\xff"):  # without the token, nothing is parsed: UNAUTHENTICATED first
        with pytest.raises(grpc.RpcError) as err:
            raw(body)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_auth_is_required_except_for_health(served):
    channel = grpc.insecure_channel(served.server.address)
    stub = pb_grpc.GenerationServiceStub(channel)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfo(pb.ModelInfoRequest(), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.ModelInfo(pb.ModelInfoRequest(), metadata=AUTH).model_id == "tiny"
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_health_follows_the_backend_and_draining(served):
    channel = grpc.insecure_channel(served.server.address)
    health = health_pb2_grpc.HealthStub(channel)
    status = lambda: health.Check(health_pb2.HealthCheckRequest(  # noqa: E731
        service="fmaas.GenerationService")).status
    assert status() == health_pb2.HealthCheckResponse.SERVING
    served.up.clear()
    wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)
    served.up.set()
    wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING)
    channel.close()


def test_reflection_lists_the_services(served):
    channel = grpc.insecure_channel(served.server.address)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        metadata=AUTH)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"fmaas.GenerationService", "grpc.health.v1.Health"} <= names
    channel.close()


def test_tokenize_and_model_info(stub, tokenizer):
    reply = stub.Tokenize(pb.BatchedTokenizeRequest(requests=[pb.TokenizeRequest(text="Hello world")],
                                                    return_tokens=True), metadata=AUTH)
    assert list(reply.responses[0].token_ids) == tokenizer.encode("Hello world")
    assert reply.responses[0].tokens == tokenizer.convert_ids_to_tokens(tokenizer.encode("Hello world"))
    info = stub.ModelInfo(pb.ModelInfoRequest(), metadata=AUTH)
    assert info.max_new_tokens == 64 and info.max_prompt_tokens == 64
    assert set(info.methods) == {pb.AR, pb.CHAIN, pb.TREE, pb.NGRAM}


def test_a_full_queue_answers_resource_exhausted_and_others_finish(tokenizer):
    served = Served(tokenizer, max_in_flight=2)
    stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(served.server.address))
    try:
        request = pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Long"), params=params(max_new_tokens=60))
        streams = [stub.GenerateStream(request) for _ in range(2)]
        firsts = [next(s) for s in streams]  # both admitted
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GenerateStream(request))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for first, stream in zip(firsts, streams):
            rest = list(stream)
            assert rest[-1].stop_reason in (pb.MAX_TOKENS, pb.EOS_TOKEN)
    finally:
        served.stop()


def test_a_broken_model_answers_internal_and_keeps_its_secrets(tokenizer):
    """An error the service did not expect (here: a model folder whose chat template fails) is INTERNAL, with a
    generic message: the client learns nothing of the server's insides; the server keeps serving."""
    broken = copy.deepcopy(tokenizer)
    broken.chat_template = "{{ raise_exception('template at /srv/models/secret-path is broken') }}"
    models = [LoadedModel(path=None, model=m.model, tokenizer=broken) for m in tiny_pair(tokenizer)]
    served = Served(tokenizer, models=models)
    channel = grpc.insecure_channel(served.server.address)
    try:
        stub = pb_grpc.GenerationServiceStub(channel)
        request = pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="Hi")],
                                              params=params(max_new_tokens=4, chat=True))
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(request)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in err.value.details() and "Traceback" not in err.value.details()
        plain = stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="Hi")],
                                                          params=params(max_new_tokens=4, chat=False)))
        assert plain.responses[0].generated_token_count == 4
    finally:
        channel.close()
        served.stop()


def test_scaling_a_server_without_replicas_is_a_failed_precondition(served):
    admin = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(served.server.address))
    with pytest.raises(grpc.RpcError) as err:
        admin.Scale(admin_pb2.ScaleRequest(replicas=2), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and err.value.details().startswith("replicas:")
    assert admin.Scale(admin_pb2.ScaleRequest(replicas=0), metadata=AUTH).replicas == 1  # reading the load is fine


def test_tls_server_answers_a_tls_client_only(tokenizer, tmp_path):
    cert, key = _self_signed()
    served = Served(tokenizer, security=ServerSecurity(tls_cert=cert, tls_key=key))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert)
        channel = grpc.secure_channel(served.server.address, credentials,
                                      options=[("grpc.ssl_target_name_override", "localhost")])
        info = pb_grpc.GenerationServiceStub(channel).ModelInfo(pb.ModelInfoRequest(), timeout=10)
        assert info.model_id == "tiny"
        plain = pb_grpc.GenerationServiceStub(grpc.insecure_channel(served.server.address))
        with pytest.raises(grpc.RpcError) as err:
            plain.ModelInfo(pb.ModelInfoRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        served.stop()


def _self_signed() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.mark.real_model
def test_mirrorspec_serve_answers_then_drains_on_sigterm(tmp_path, ray_cluster, capsys, monkeypatch):
    """The CLI server on the default pair serving `mirror`, so each replica is a whole pipeline (the drafter's
    actor and the target's, half a core each) on the session's Ray cluster: a token from the environment,
    TLS only (a plain client is refused), Prometheus metrics of the requests, `mirrorspec scale`, auth, reflection,
    health, cancel and deadline, and a streamed request that is still running when SIGTERM arrives finishes whole
    while health reads NOT_SERVING; the process exits 0."""
    import os
    import signal
    import subprocess
    import sys

    cert, key = _self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    config = tmp_path / "ray_config.yaml"
    config.write_text("serve: {port: 0, http_port: 0, metrics_port: 0, token_env: MS_TOKEN, max_new_tokens: 128, max_replicas: 3, "
                      f"default_max_new_tokens: 64, tls_cert: {tmp_path / 'cert.pem'}, "
                      f"tls_key: {tmp_path / 'key.pem'}}}\n"
                      "speculation: {method: mirror, gamma: 3}\n"
                      "cluster: {target: {resources: {CPU: 0.5}, threads: 1}, "
                      "drafter: {resources: {CPU: 0.5}, threads: 1}}\n")
    env = {**os.environ, "MS_TOKEN": TOKEN, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    monkeypatch.setenv("MS_TOKEN", TOKEN)  # for `mirrorspec scale` in this process
    proc = subprocess.Popen([sys.executable, "-m", "mirrorspec.cli.main", "serve", "--config", str(config),
                             "--drafter", "default", "--max-batch", "2", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read()
        address, http_url, metrics_url = re.search(r" on (\S+); OpenAI-compatible HTTP on (\S+); metrics on (\S+)",
                                                   line).groups()
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=cert))
        stub = pb_grpc.GenerationServiceStub(channel)
        stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="Hi")], params=pb.Parameters(
            stopping=pb.StoppingCriteria(max_new_tokens=16))), metadata=AUTH)
        scraped = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        samples = {(x.name, tuple(sorted(x.labels.items()))): x.value for family in
                   text_string_to_metric_families(scraped) for x in family.samples}
        assert "_created" not in scraped  # and every series names the model, as vLLM's
        assert all(dict(labels).get("model_name") == "SmolLM2-135M-Instruct" for name, labels in samples
                   if name.startswith("mirrorspec:"))  # Ray Serve's own ray_serve_* series come with their labels

        def value(name: str, **labels) -> float:
            key = (f"mirrorspec:{name}", tuple(sorted({"model_name": "SmolLM2-135M-Instruct", **labels}.items())))
            return samples.get(key, 0.0)

        assert value("request_success_total", finished_reason="length") + value(
            "request_success_total", finished_reason="eos") == 1.0
        # The same replicas over OpenAI-compatible HTTPS, same token.
        import openai

        client = openai.OpenAI(base_url=http_url, api_key=TOKEN, max_retries=0, timeout=120,
                               http_client=openai.DefaultHttpxClient(verify=str(tmp_path / "cert.pem")))
        chat = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=8, temperature=0,
                                              messages=[{"role": "user", "content": "Hi"}])
        assert chat.choices[0].message.content and chat.usage.completion_tokens >= 1
        assert chat.choices[0].model_extra["speculation"]["target_forwards"] >= 1
        assert value("spec_decode_num_drafts_total") >= 1 and value("time_to_first_token_seconds_count") == 1.0
        assert value("num_requests_running") == 0.0 and value("num_replicas") == 1.0
        # `mirrorspec scale N` against the running server (0: read the load). Scaling itself is Serve's own call for
        # engine and pipeline replicas alike: tests/test_replicas.py scales 1 -> 2 -> 1 under load.
        from mirrorspec.cluster.serve import scale_server

        tls = {"token_env": "MS_TOKEN", "tls_ca": str(tmp_path / "cert.pem")}
        assert scale_server(address, 0, **tls) == 0
        assert '"replicas": 1' in capsys.readouterr().out.splitlines()[-1]
        # Over the Ray replicas too: TLS only, auth, reflection, health, a cancel and a deadline freeing slots.
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GenerationServiceStub(grpc.insecure_channel(address)).ModelInfo(pb.ModelInfoRequest(),
                                                                                   metadata=AUTH, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfo(pb.ModelInfoRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=AUTH)
        assert "fmaas.GenerationService" in {s.name for r in listing
                                                                 for s in r.list_services_response.service}
        health = health_pb2_grpc.HealthStub(channel)
        status = lambda: health.Check(health_pb2.HealthCheckRequest(service="")).status  # noqa: E731
        assert status() == health_pb2.HealthCheckResponse.SERVING
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        # Scale is bounded: by serve.max_replicas, and by what the session's 2-CPU cluster can place (each
        # replica takes 1 CPU): refused at once, nothing started.
        for replicas, code, said in ((4, grpc.StatusCode.INVALID_ARGUMENT, "serve.max_replicas=3"),
                                     (3, grpc.StatusCode.RESOURCE_EXHAUSTED, "need CPU 2")):
            with pytest.raises(grpc.RpcError) as err:
                admin.Scale(admin_pb2.ScaleRequest(replicas=replicas), metadata=AUTH, timeout=10)
            assert err.value.code() == code and err.value.details().startswith("replicas:") and said in \
                err.value.details(), err.value.details()
        assert admin.Scale(admin_pb2.ScaleRequest(replicas=0), metadata=AUTH).replicas == 1
        in_flight = lambda: admin.Scale(admin_pb2.ScaleRequest(replicas=0), metadata=AUTH).in_flight  # noqa: E731
        long = pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Go on"), params=pb.Parameters(
            stopping=pb.StoppingCriteria(max_new_tokens=128, min_new_tokens=128)))
        cancelled = stub.GenerateStream(long, metadata=AUTH)
        next(cancelled)
        cancelled.cancel()
        wait_until(lambda: in_flight() == 0, timeout_s=30)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GenerateStream(long, metadata=AUTH, timeout=1.0))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: in_flight() == 0, timeout_s=30)
        request = pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Name three colors."),
                                             params=pb.Parameters(chat=True, stopping=pb.StoppingCriteria(
                                                 max_new_tokens=48, min_new_tokens=48)))
        stream = stub.GenerateStream(request, metadata=AUTH)
        first = next(stream)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)  # at once, while it drains
        with pytest.raises(grpc.RpcError) as err:  # a new request while draining: retry elsewhere
            stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="Hi")]), metadata=AUTH,
                          timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
        rest = list(stream)
        assert len(first.token_ids) + sum(len(p.token_ids) for p in rest) == 48
        assert rest[-1].stop_reason == pb.MAX_TOKENS
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_admin_service_is_off_unless_a_token_guards_it(monkeypatch):
    from mirrorspec.cluster.config import ServeConfig
    from mirrorspec.cluster.serve import _admin

    assert _admin(ServeConfig(), backend=None) is None  # any local process could reach it
    assert isinstance(_admin(ServeConfig(admin=True), backend=None), AdminService)
    monkeypatch.setenv("MS_ADMIN_TOKEN", "secret")
    admin = _admin(ServeConfig(token_env="MS_ADMIN_TOKEN", max_replicas=3), backend=None)
    assert isinstance(admin, AdminService) and admin.max_replicas == 3
    assert _admin(ServeConfig(token_env="MS_ADMIN_TOKEN", admin=False), backend=None) is None


def test_chat_messages_and_the_chat_default(stub, served, tokenizer):
    """Text goes through the chat template unless params.chat is false; a messages list (system + turns) is a
    prompt too, refused by field when malformed."""
    engine = tiny_engine_of(served.models, tokenizer)
    turns = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why is the sky blue?"}]
    sampling = SamplingParams(max_new_tokens=12)
    expected = {"default": engine.generate(["Why is the sky blue?"], sampling)[0].token_ids,
                "raw": engine.generate(["Why is the sky blue?"], sampling, chat=False)[0].token_ids,
                "messages": engine.generate([turns], sampling)[0].token_ids}
    assert engine.encode("Why is the sky blue?") == engine.encode([turns[-1]]) != engine.encode("x", chat=False)
    as_text = pb.GenerationRequest(text="Why is the sky blue?")
    as_turns = pb.GenerationRequest(messages=[pb.ChatMessage(**t) for t in turns])
    for name, request, chat in (("default", as_text, None), ("raw", as_text, False), ("messages", as_turns, None)):
        kw = {} if chat is None else {"chat": chat}
        reply = stub.Generate(pb.BatchedGenerationRequest(requests=[request], params=params(spec_method=pb.AR, **kw)),
                              metadata=AUTH)
        assert list(reply.responses[0].token_ids) == expected[name], name
    bad = [(pb.GenerationRequest(text="x", messages=[pb.ChatMessage(role="user", content="x")]), {}, "requests[0]"),
           (pb.GenerationRequest(messages=[pb.ChatMessage(role="bot", content="x")]), {}, "requests[0].messages[0].role"),
           (pb.GenerationRequest(messages=[pb.ChatMessage(role="user", content="Hi"),
                                           pb.ChatMessage(role="assistant", content="Hello")]), {},
            "requests[0].messages[1]"),
           (as_turns, {"chat": False}, "params.chat")]
    for request, kw, field in bad:
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(pb.BatchedGenerationRequest(requests=[request], params=params(**kw)), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field + ":")


class EndedRpc:
    """The server side of an RPC that ended (deadline, client gone) before its request was queued: gRPC then
    refuses to register callbacks, so only the service itself can cancel what it queued."""

    def add_callback(self, callback) -> bool:
        return False

    def is_active(self) -> bool:
        return False


def test_a_stream_whose_rpc_already_ended_frees_its_request(served):
    """Found by bench/soak.py: such a request was never read nor cancelled, and held its replica's drain."""
    service = served.server.servicer
    request = pb.SingleGenerationRequest(request=pb.GenerationRequest(text="Hello"), params=params(max_new_tokens=60))
    assert list(service.GenerateStream(request, EndedRpc())) == []
    wait_until(lambda: served.loop.load()["in_flight"] == 0, 30, "the request kept its slot")
    unary = pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="Hello")], params=params())
    assert service.Generate(unary, EndedRpc()) == pb.BatchedGenerationResponse()
    assert served.loop.load()["in_flight"] == 0
