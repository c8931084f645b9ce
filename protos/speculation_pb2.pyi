from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingMessage(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrafterInfo(_message.Message):
    __slots__ = ("uses_features", "feature_size", "vocabulary", "vocab_size", "drafts_by_diffusion", "feature_layers")
    USES_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_BY_DIFFUSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    uses_features: bool
    feature_size: int
    vocabulary: _containers.RepeatedScalarFieldContainer[int]
    vocab_size: int
    drafts_by_diffusion: bool
    feature_layers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, uses_features: _Optional[bool] = ..., feature_size: _Optional[int] = ..., vocabulary: _Optional[_Iterable[int]] = ..., vocab_size: _Optional[int] = ..., drafts_by_diffusion: _Optional[bool] = ..., feature_layers: _Optional[_Iterable[int]] = ...) -> None: ...

class TargetMessage(_message.Message):
    __slots__ = ("seq", "open", "release", "propose", "early_exit")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_FIELD_NUMBER: _ClassVar[int]
    EARLY_EXIT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    open: Open
    release: Release
    propose: Propose
    early_exit: EarlyExit
    def __init__(self, seq: _Optional[int] = ..., open: _Optional[_Union[Open, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., propose: _Optional[_Union[Propose, _Mapping]] = ..., early_exit: _Optional[_Union[EarlyExit, _Mapping]] = ...) -> None: ...

class DrafterMessage(_message.Message):
    __slots__ = ("seq", "drafts", "error", "busy_ms", "propose_ms")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BUSY_MS_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    drafts: Drafts
    error: Error
    busy_ms: float
    propose_ms: float
    def __init__(self, seq: _Optional[int] = ..., drafts: _Optional[_Union[Drafts, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., busy_ms: _Optional[float] = ..., propose_ms: _Optional[float] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ...) -> None: ...

class OpenSequence(_message.Message):
    __slots__ = ("id", "seed", "sampling")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    id: int
    seed: int
    sampling: Sampling
    def __init__(self, id: _Optional[int] = ..., seed: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("sequences",)
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[OpenSequence]
    def __init__(self, sequences: _Optional[_Iterable[_Union[OpenSequence, _Mapping]]] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("width", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    data: bytes
    def __init__(self, width: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("id", "committed", "accepted_nodes", "features", "depth", "topk", "budget", "branches", "min_path")
    ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_NODES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    TOPK_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    MIN_PATH_FIELD_NUMBER: _ClassVar[int]
    id: int
    committed: _containers.RepeatedScalarFieldContainer[int]
    accepted_nodes: _containers.RepeatedScalarFieldContainer[int]
    features: Features
    depth: int
    topk: int
    budget: int
    branches: bool
    min_path: float
    def __init__(self, id: _Optional[int] = ..., committed: _Optional[_Iterable[int]] = ..., accepted_nodes: _Optional[_Iterable[int]] = ..., features: _Optional[_Union[Features, _Mapping]] = ..., depth: _Optional[int] = ..., topk: _Optional[int] = ..., budget: _Optional[int] = ..., branches: _Optional[bool] = ..., min_path: _Optional[float] = ...) -> None: ...

class Propose(_message.Message):
    __slots__ = ("verdicts",)
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class ExitCandidates(_message.Message):
    __slots__ = ("id", "positions", "kappa", "ids", "logprobs")
    ID_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    KAPPA_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    id: int
    positions: int
    kappa: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[int] = ..., positions: _Optional[int] = ..., kappa: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class EarlyExit(_message.Message):
    __slots__ = ("layer", "sequences")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    layer: int
    sequences: _containers.RepeatedCompositeFieldContainer[ExitCandidates]
    def __init__(self, layer: _Optional[int] = ..., sequences: _Optional[_Iterable[_Union[ExitCandidates, _Mapping]]] = ...) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("ids", "probs")
    IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class Tree(_message.Message):
    __slots__ = ("id", "ids", "parents", "logprobs", "proposals", "reused")
    ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    id: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    parents: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    proposals: _containers.RepeatedCompositeFieldContainer[Proposal]
    reused: bool
    def __init__(self, id: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., parents: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., proposals: _Optional[_Iterable[_Union[Proposal, _Mapping]]] = ..., reused: _Optional[bool] = ...) -> None: ...

class Drafts(_message.Message):
    __slots__ = ("trees",)
    TREES_FIELD_NUMBER: _ClassVar[int]
    trees: _containers.RepeatedCompositeFieldContainer[Tree]
    def __init__(self, trees: _Optional[_Iterable[_Union[Tree, _Mapping]]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("field", "message")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    field: str
    message: str
    def __init__(self, field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
