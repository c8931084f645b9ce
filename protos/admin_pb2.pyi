from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ScaleRequest(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    def __init__(self, replicas: _Optional[int] = ...) -> None: ...

class ScaleResponse(_message.Message):
    __slots__ = ("replicas", "in_flight", "running", "waiting", "autoscaling")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    in_flight: int
    running: int
    waiting: int
    autoscaling: bool
    def __init__(self, replicas: _Optional[int] = ..., in_flight: _Optional[int] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., autoscaling: _Optional[bool] = ...) -> None: ...
