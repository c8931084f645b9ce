"""The gRPC gate every server of this project puts in front of its services (the public GenerationService and the
internal speculation channel alike).

- Auth: with a token configured, every RPC but the health check (load balancers and probes call it without
  credentials) must carry `authorization: Bearer <token>`, else UNAUTHENTICATED. Compared in constant time.
- Malformed messages: a request whose bytes are not a valid message (a string field that is not UTF-8, most
  often) is answered INVALID_ARGUMENT naming the field, instead of gRPC's generic INTERNAL; in a stream of
  requests, the first such message ends the call that way.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from mirrorspec.protos import generation_pb2 as pb

HEALTH_METHODS = "/grpc.health.v1.Health/"
SERVICE = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name


class _Malformed:
    """Stands for a request that could not be parsed; the handler answers INVALID_ARGUMENT with `reason`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def bearer_ok(token: str | None, sent) -> bool:
    """Whether an `authorization` value carries the token (always, with no token configured); constant time."""
    return token is None or hmac.compare_digest(str(sent).encode(), f"Bearer {token}".encode())


class Gate(grpc.ServerInterceptor):
    """Bearer-token check and malformed-message handling for every RPC (also the speculation channel's)."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        if not details.method.startswith(HEALTH_METHODS):
            if not bearer_ok(self.token, dict(details.invocation_metadata or ()).get("authorization", "")):
                return _denied(handler)
        if handler.request_deserializer is None:
            return handler
        behaviour = handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary
        checked = _checked_stream(behaviour) if handler.request_streaming else _checked(behaviour)
        return _kind(handler)(checked, request_deserializer=_tolerant(handler.request_deserializer, details.method),
                              response_serializer=handler.response_serializer)


def _kind(handler) -> Callable:
    """The constructor of handlers of the same streaming kind as `handler`."""
    return {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[(handler.request_streaming, handler.response_streaming)]


def _denied(handler):
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED. It never parses the request: an
    unauthenticated caller learns nothing from how its bytes fail to parse (that would be INTERNAL)."""
    return _kind(handler)(_deny, request_deserializer=_ignored, response_serializer=handler.response_serializer)


def _ignored(data: bytes) -> bytes:
    return data  # passed as is to _deny, which never reads it (None would read as a failed parse)


def _deny(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: a valid bearer token is required")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries `token`."""
    return (("authorization", f"Bearer {token}"),)


def _checked(behaviour):
    def run(request, context):
        if isinstance(request, _Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return behaviour(request, context)

    return run


def _checked_stream(behaviour):
    """A streamed request ends the call with INVALID_ARGUMENT at its first message that does not parse."""
    def run(requests, context):
        def parsed():
            for request in requests:
                if isinstance(request, _Malformed):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                yield request

        return behaviour(parsed(), context)

    return run


def _tolerant(deserialize: Callable[[bytes], object], method: str):
    service, _, name = method.rpartition("/")
    descriptor = _request_descriptor(service.lstrip("/"), name)

    def parse(data: bytes):
        try:
            return deserialize(data)
        except DecodeError:
            field = None if descriptor is None else invalid_utf8_field(data, descriptor)
            if field is not None:
                return _Malformed(f"{field}: not valid UTF-8")
            return _Malformed("request: not a valid message")

    return parse


def _request_descriptor(service: str, method: str):
    if service != SERVICE:
        return None
    return pb.DESCRIPTOR.services_by_name["GenerationService"].methods_by_name[method].input_type


def invalid_utf8_field(data: bytes, descriptor, prefix: str = "") -> str | None:
    """The path of the first string field in the encoded message `data` that is not valid UTF-8 (None if none),
    read straight from the wire format, since the message itself does not parse."""
    pos, seen = 0, {}
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            chunk, pos = data[pos:pos + length], pos + length
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            name = prefix + field.name
            if field.is_repeated:
                index = seen.get(number, 0)
                seen[number] = index + 1
                name += f"[{index}]"
            if field.type == field.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return name
            elif field.type == field.TYPE_MESSAGE:
                found = invalid_utf8_field(chunk, field.message_type, name + ".")
                if found is not None:
                    return found
        else:
            return None  # groups: not in these messages
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return value, pos
