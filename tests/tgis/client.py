"""A plain TGIS client in a process of its own (its fmaas messages must not meet mirrorspec's in one descriptor
pool): `python client.py STUBS_DIR ADDRESS TOKEN` reads a JSON list of calls on stdin,
[{"rpc": "Generate", "request": {...}}], and prints a JSON list of replies (a stream: the list of its messages;
a failed call: {"code": "INVALID_ARGUMENT", "details": "..."})."""

import json
import sys

import grpc
from google.protobuf import json_format

sys.path.insert(0, sys.argv[1])
import generation_pb2 as pb  # noqa: E402
import generation_pb2_grpc as pb_grpc  # noqa: E402

REQUESTS = {"Generate": pb.BatchedGenerationRequest, "GenerateStream": pb.SingleGenerationRequest,
            "Tokenize": pb.BatchedTokenizeRequest, "ModelInfo": pb.ModelInfoRequest}


def as_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def call(stub, rpc: str, request: dict, metadata):
    message = json_format.ParseDict(request, REQUESTS[rpc]())
    try:
        if rpc == "GenerateStream":
            return [as_dict(m) for m in stub.GenerateStream(message, metadata=metadata, timeout=120)]
        return as_dict(getattr(stub, rpc)(message, metadata=metadata, timeout=120))
    except grpc.RpcError as exc:
        return {"code": exc.code().name, "details": exc.details()}


def main() -> None:
    calls = json.load(sys.stdin)
    metadata = (("authorization", f"Bearer {sys.argv[3]}"),)
    with grpc.insecure_channel(sys.argv[2]) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        print(json.dumps([call(stub, c["rpc"], c["request"], metadata) for c in calls]))


if __name__ == "__main__":
    main()
