"""The target split over N ranks with DeepSpeed AutoTP, and the lockstep that keeps the ranks together.

Rank 0 (the leader) runs the engine's step loop. Its worker is a `LockstepWorker`: every call that runs a
forward or changes the KV cache is first broadcast to the other ranks (a pickled (method, args) over the gloo
group), then run locally. The followers run `follow`: receive a call, run it on their own shard, drop the
result. DeepSpeed's all-reduces inside each forward keep the ranks in step; the broadcast keeps them on the
same inputs. A follower's KV cache holds its own heads only (AutoTP splits the KV heads by groups).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import threading

import torch
import torch.distributed as dist

from mirrorspec.errors import InvalidRequestError
from mirrorspec.workers.interface import EarlyExit
from mirrorspec.workers.model_worker import ModelWorker
from mirrorspec.workers.models import LoadedModel

logger = logging.getLogger(__name__)

# A rank blocked longer than this in a collective raises instead of waiting for ever (the driver's watchdog
# normally ends a broken group much sooner, see cluster/pipeline.py).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
_STOP = "stop"


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """Where rank `rank` of a `world_size`-rank group meets the others."""

    rank: int
    world_size: int
    master_port: int
    backend: str  # gloo (CPU) | nccl (CUDA)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_tp_size(tp_size: int, config) -> None:
    """AutoTP gives each rank whole KV-head groups (unevenly if need be: 3 KV heads over 2 ranks -> 2 + 1); a
    rank left without one has no attention to run, so tp_size may not exceed the KV heads."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    if tp_size > kv_heads:
        raise InvalidRequestError("cluster.tp_size", f"{tp_size} ranks but the target has {kv_heads} KV heads: "
                                                     f"AutoTP would leave a rank without attention heads")


def exact_with_tp_error() -> InvalidRequestError:
    return InvalidRequestError("engine.exact", "is not available with tensor parallelism yet (the ranks' all-reduce "
                                               "adds partial sums in an order of its own): set engine.exact: false "
                                               "or pass --no-exact with cluster.tp_size > 1")


def join_group(spec: GroupSpec) -> None:
    """Join the group: the environment DeepSpeed reads, then its distributed backend."""
    local_rank = spec.rank
    if spec.backend == "nccl":
        # DeepSpeed binds to cuda:LOCAL_RANK; a Ray GPU actor sees only its own GPU(s), numbered from 0.
        local_rank = spec.rank % max(1, torch.cuda.device_count())
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec.master_port), RANK=str(spec.rank),
                      WORLD_SIZE=str(spec.world_size), LOCAL_RANK=str(local_rank),
                      # Without LOCAL_SIZE DeepSpeed's CPU all-reduce crashes every rank (SIGSEGV).
                      LOCAL_SIZE=str(spec.world_size))
    import deepspeed

    deepspeed.init_distributed(dist_backend=spec.backend, timeout=COLLECTIVE_TIMEOUT, verbose=False)


def shard(loaded: LoadedModel, tp_size: int) -> LoadedModel:
    """This rank's shard of the model (DeepSpeed AutoTP, no kernel injection: transformers' own layers run)."""
    import deepspeed

    engine = deepspeed.init_inference(loaded.model, tensor_parallel={"tp_size": tp_size},
                                      dtype=loaded.model.dtype, replace_with_kernel_inject=False)
    return dataclasses.replace(loaded, model=engine.module.eval())


def _send(call: object) -> None:
    dist.broadcast_object_list([call], src=0)


def _receive() -> object:
    box: list[object] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class LockstepWorker:
    """The leader's worker: what runs a forward or touches the KV cache runs on every rank, in the same order."""

    def __init__(self, local: ModelWorker) -> None:
        self.local = local
        # One call at a time from any thread: the followers must see the calls in the order they run here.
        self._lock = threading.Lock()
        self.vocab_size = local.vocab_size
        self.num_layers = local.num_layers
        self.exit_layer = local.exit_layer
        self.uses_features = local.uses_features
        self.feature_layers = local.feature_layers
        self.vocabulary = local.vocabulary

    def _everywhere(self, name: str, *args, **kwargs):
        with self._lock:
            _send((name, args, kwargs))
            return getattr(self.local, name)(*args, **kwargs)

    def open(self, seq_id: int) -> None:
        self._everywhere("open", seq_id)

    def release(self, seq_id: int) -> None:
        self._everywhere("release", seq_id)

    def length(self, seq_id: int) -> int:
        return self.local.length(seq_id)  # the same on every rank: no need to ask them

    def commit(self, paths: dict[int, list[int]]) -> None:
        self._everywhere("commit", paths)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._everywhere("logits", hidden)  # a sharded LM head all-reduces: every rank runs it

    def clear_speculation(self, seq_id: int) -> None:
        self._everywhere("clear_speculation", seq_id)

    def forward(self, seq_ids, appends, nodes=None, parents=None, features=None) -> list[torch.Tensor]:
        return self.forward_hidden(seq_ids, appends, nodes, parents, features)[0]

    def forward_hidden(self, seq_ids, appends, nodes=None, parents=None, features=None,
                       early_exit: EarlyExit | None = None):
        # The followers compute the early exit too (a sharded LM head all-reduces) but have no one to tell.
        remote_exit = None if early_exit is None else dataclasses.replace(early_exit, callback=None)
        with self._lock:
            _send(("forward_hidden", (seq_ids, appends, nodes, parents, features, remote_exit), {}))
            return self.local.forward_hidden(seq_ids, appends, nodes, parents, features, early_exit)

    def set_output_layers(self, layers) -> None:
        self.local.set_output_layers(layers)  # only the leader returns hidden states

    def stop_followers(self) -> None:
        with self._lock:
            _send(_STOP)


def _ignore(_results) -> None:
    pass


def follow(local: ModelWorker) -> int:
    """A follower rank's loop: run the leader's calls on this shard until told to stop; returns calls run."""
    calls = 0
    while True:
        call = _receive()
        if call == _STOP:
            return calls
        name, args, kwargs = call
        if name == "forward_hidden" and args[5] is not None:
            args = (*args[:5], dataclasses.replace(args[5], callback=_ignore))
        getattr(local, name)(*args, **kwargs)
        calls += 1
