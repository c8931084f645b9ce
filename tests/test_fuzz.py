"""Property-based fuzzing (hypothesis, bounded for CI) of the public GenerationService on a real server: any
request, well formed or not, any bytes on the wire, is answered OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED (never
INTERNAL, never a wedged server), and a normal request still gets the right answer afterwards."""

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_generation_service import AUTH, TOKEN, Served, tokenizer  # noqa: F401  (the tokenizer fixture)
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos import generation_pb2_grpc as pb_grpc
from mirrorspec.serving.grpc_server import ServerSecurity

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
CASES = settings(max_examples=100, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

u32 = st.integers(0, 2**32 - 1)


def mostly(sensible, anything):
    """Three times in four a sensible value (so that most requests run), else anything the wire can carry."""
    return st.one_of(sensible, sensible, sensible, anything)


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
text = mostly(st.text(min_size=1, max_size=40), st.sampled_from(["", "   ", "word " * 120]))
prompt_text = st.text(min_size=1, max_size=40).filter(str.strip)


@st.composite
def requests(draw):
    """Half the requests draw every field sensibly (so that they run), the others field by field."""
    mostly = (lambda sensible, anything: sensible) if draw(st.booleans()) else globals()["mostly"]
    sampling = pb.SamplingParameters(temperature=draw(mostly(st.floats(0, 2, width=32), floats)),
                                     top_k=draw(mostly(st.integers(0, 10), u32)),
                                     top_p=draw(mostly(st.floats(0.0625, 1, width=32), floats)))
    if draw(st.booleans()):
        sampling.seed = draw(st.integers(0, 2**64 - 1))
    stopping = pb.StoppingCriteria(max_new_tokens=draw(mostly(st.integers(0, 16), u32)),
                                   min_new_tokens=draw(mostly(st.integers(0, 4), u32)),
                                   stop_sequences=draw(mostly(st.lists(prompt_text, max_size=2),
                                                              st.lists(text, max_size=2))),
                                   time_limit_millis=draw(st.integers(0, 50)))
    shape = mostly(st.integers(0, 6), u32)
    speculation = pb.SpeculationParameters(gamma=draw(shape), tree_depth=draw(shape), tree_topk=draw(shape),
                                           tree_nodes=draw(shape), kappa=draw(shape),
                                           fixed_draft=draw(st.booleans()), no_ngram_branches=draw(st.booleans()),
                                           no_corpus=draw(st.booleans()),
                                           method=draw(mostly(st.sampled_from([pb.METHOD_DEFAULT, pb.AR, pb.CHAIN,
                                                                               pb.TREE, pb.NGRAM]),
                                                              st.integers(0, 2**31 - 1))))
    decoding = pb.DecodingParameters(repetition_penalty=draw(mostly(st.floats(0, 2, width=32), floats)))
    if draw(st.booleans()):
        decoding.length_penalty.start_index = draw(mostly(st.integers(0, 8), u32))
        decoding.length_penalty.decay_factor = draw(mostly(st.floats(1, 2, width=32), floats))
    response = pb.ResponseOptions(input_text=draw(st.booleans()), generated_tokens=draw(st.booleans()),
                                  input_tokens=draw(st.booleans()), token_logprobs=draw(st.booleans()),
                                  token_ranks=draw(st.booleans()), top_n_tokens=draw(mostly(st.integers(0, 5), u32)))
    params = pb.Parameters(method=draw(mostly(st.sampled_from([pb.GREEDY, pb.SAMPLE]), st.integers(0, 2**31 - 1))),
                           sampling=sampling, stopping=stopping, speculation=speculation, decoding=decoding,
                           response=response, truncate_input_tokens=draw(mostly(st.integers(0, 8), u32)),
                           chat=draw(st.booleans()))
    return pb.BatchedGenerationRequest(model_id=draw(mostly(st.sampled_from(["", "tiny"]), st.text(max_size=8))),
                                       params=params, requests=[pb.GenerationRequest(text=t) for t in
                                                                draw(mostly(st.lists(prompt_text, min_size=1,
                                                                                     max_size=3),
                                                                            st.lists(text, max_size=3)))])


@pytest.fixture(scope="module")
def server(tokenizer):  # noqa: F811
    served = Served(tokenizer, security=ServerSecurity(token=TOKEN))
    yield served
    served.stop()


def status_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@CASES
@given(request=requests())
def test_any_request_is_answered_or_refused_by_field(server, request):
    with grpc.insecure_channel(server.server.address) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        assert status_of(lambda: stub.Generate(request, metadata=AUTH, timeout=30)) in ALLOWED
        single = pb.SingleGenerationRequest(model_id=request.model_id, params=request.params,
                                            request=(request.requests or [pb.GenerationRequest()])[0])
        assert status_of(lambda: list(stub.GenerateStream(single, metadata=AUTH, timeout=30))) in ALLOWED


@CASES
@given(body=st.binary(max_size=200))
def test_any_bytes_are_answered_or_refused(server, body):
    with grpc.insecure_channel(server.server.address) as channel:
        raw = channel.unary_unary("/fmaas.GenerationService/Generate",
                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)
        assert status_of(lambda: raw(body, metadata=AUTH, timeout=30)) in ALLOWED


def test_the_server_still_answers_right_after_the_fuzzing(server, tokenizer):  # noqa: F811
    from test_generation_service import tiny_engine_of

    reference = tiny_engine_of(server.models, tokenizer).generate(["Hello there"], SamplingParams(max_new_tokens=8),
                                                                  SpecParams(method="ar"))
    with grpc.insecure_channel(server.server.address) as channel:
        reply = pb_grpc.GenerationServiceStub(channel).Generate(pb.BatchedGenerationRequest(
            requests=[pb.GenerationRequest(text="Hello there")],
            params=pb.Parameters(speculation=pb.SpeculationParameters(method=pb.CHAIN),
                                 stopping=pb.StoppingCriteria(max_new_tokens=8))), metadata=AUTH)
    assert list(reply.responses[0].token_ids) == reference[0].token_ids
