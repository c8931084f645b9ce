"""The composition root: load the models an EngineConfig names into workers, and build an Engine over them.

The one module of the decoding core that loads models; everything else in orchestration/ sees workers through
workers/interface.py. The Ray actors (cluster/actors.py) call `build_target` and `build_drafter` to hold one role
each; `build_engine` holds both in this process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.methods import DIFFUSION_DRAFTER, METHODS
from mirrorspec.orchestration.diffusion_draft import DiffusionDraftService
from mirrorspec.orchestration.engine import SELF_DRAFTER, Engine, EngineConfig
from mirrorspec.orchestration.interfaces import DraftService
from mirrorspec.orchestration.ngram_corpus import CorpusIndex, load_corpus
from mirrorspec.orchestration.step_cost import MEASURE, PROBE_COUNTS, StepCost, measure_step_cost, parse_step_cost
from mirrorspec.workers import (attention, exact_attention, exact_attention_kernel, exact_linear, kv_cache,
                                model_worker)
from mirrorspec.workers import cpu_linear as fast_cpu_linear
from mirrorspec.workers.default_model import cache_dir
from mirrorspec.workers.diffusion_model import is_dllm_folder, load_dllm
from mirrorspec.workers.drafter_model import Drafter, DrafterWorker, is_drafter_folder
from mirrorspec.workers.exit_head import ExitHead, is_exit_head_folder
from mirrorspec.workers.interface import Worker
from mirrorspec.workers.model_worker import ModelWorker
from mirrorspec.workers.models import (
    DEFAULT,
    LoadedModel,
    ModelInfo,
    check_same_tokenizer,
    load_model,
    load_tokenizer,
    parse_device,
    parse_dtype,
)
from mirrorspec.workers.tensor_parallel import GroupSpec, exact_with_tp_error, join_group, shard

logger = logging.getLogger(__name__)

# Made by `mirrorspec train-drafter` for SmolLM2-135M-Instruct (the exact command is in its training_report.json).
DEFAULT_DRAFTER_DIR = Path(__file__).resolve().parents[1] / "drafters" / "smollm2-135m-feature"
# Made by `mirrorspec train-dllm --from-drafter` (command in its training_report.json): diffusion-draft's default.
DEFAULT_DIFFUSION_DRAFTER_DIR = Path(__file__).resolve().parents[1] / "drafters" / "smollm2-135m-ddraft"
# Made by `mirrorspec train-exit-head` (command in its exit_head.json).
DEFAULT_EXIT_HEAD_DIR = Path(__file__).resolve().parents[1] / "drafters" / "smollm2-135m-exit-head"
# The default target's own greedy answers to the drafter's training prompts (`mirrorspec write-ngram-corpus`).
DEFAULT_NGRAM_CORPUS = Path(__file__).resolve().parents[1] / "drafters" / "smollm2-135m-ngram-corpus.jsonl.gz"


def eos_token_ids(loaded: LoadedModel) -> list[int]:
    """EOS ids from the generation config and the tokenizer (chat models often end turns with their own token)."""
    ids: set[int] = set()
    for source in (getattr(loaded.model, "generation_config", None), loaded.config):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    if loaded.tokenizer is not None and loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return sorted(ids)


def build_ngram_corpus(config: EngineConfig, tokenizer) -> CorpusIndex | None:
    """The corpus engine.ngram_corpus names, in the target's token ids; `default` -> the default target's own
    answers, shipped (None for other targets: they phrase things their own way)."""
    path = config.ngram_corpus
    if path == DEFAULT:
        if config.target != DEFAULT:
            return None
        path = DEFAULT_NGRAM_CORPUS
    if not path:
        return None
    if not Path(path).is_file():
        raise InvalidRequestError("ngram_corpus", f"no such file: {str(path)!r} (a JSONL file of {{\"text\": ...}} "
                                                  f"rows, optionally .gz)")
    return load_corpus(str(path), tokenizer)


def resolve_exit_head(config: EngineConfig, num_layers: int, hidden_size: int) -> ExitHead | None:
    """`default` -> the head shipped for the embedded default target (None for other targets)."""
    folder = config.exit_head
    if folder == DEFAULT:
        if config.target != DEFAULT:
            return None  # the shipped head fits only the default target; others use the logit lens
        folder = DEFAULT_EXIT_HEAD_DIR
    if not folder:
        return None
    if not is_exit_head_folder(folder):
        raise InvalidRequestError("exit_head", f"{str(folder)!r} is not an exit-head folder (see train-exit-head)")
    head = ExitHead.load(folder)
    if head.meta.hidden_size != hidden_size or not 1 <= head.meta.layer < num_layers:
        raise InvalidRequestError("exit_head", f"{str(folder)!r} was fitted for another target (layer "
                                               f"{head.meta.layer}, hidden size {head.meta.hidden_size})")
    return head


def resolve_drafter(config: EngineConfig, method: str | None = None) -> str | None:
    """`default` -> the drafter shipped in this repository for the embedded default target (for diffusion-draft,
    the shipped block-diffusion drafter)."""
    if config.drafter != DEFAULT:
        return config.drafter
    if config.target != DEFAULT:
        raise InvalidRequestError("drafter", "'default' names the shipped drafter of the default target; "
                                             "give a drafter folder (or 'self') for this target")
    by_diffusion = method is not None and METHODS[method].drafter == DIFFUSION_DRAFTER
    folder = DEFAULT_DIFFUSION_DRAFTER_DIR if by_diffusion else DEFAULT_DRAFTER_DIR
    if not folder.is_dir():
        raise InvalidRequestError("drafter", f"the shipped default drafter is missing ({folder})")
    return str(folder)


def _trained_drafter(config: EngineConfig, target: LoadedModel | ModelInfo, dtype, sizes: dict) -> DrafterWorker:
    """A drafter made by `mirrorspec train-drafter` (reduced vocabulary, optionally feature-conditioned)."""
    folder = Path(config.drafter)
    drafter = Drafter.load(folder, dtype).to(parse_device(config.drafter_device or config.device, "drafter_device"))
    check_same_tokenizer(target, LoadedModel(path=folder, model=drafter.lm, tokenizer=load_tokenizer(folder)))
    if (why := drafter.meta.mismatch(target.config)) is not None:
        raise InvalidRequestError("drafter", f"{drafter.meta.kind} drafter {str(folder)!r} {why}")
    fast_cpu_linear.apply(drafter, config.cpu_linear)
    return DrafterWorker(drafter, **sizes)


def _diffusion_drafter(config: EngineConfig, target: LoadedModel | ModelInfo) -> DiffusionDraftService:
    """A block-diffusion drafter made by `mirrorspec train-dllm --from-drafter`."""
    model = load_dllm(config.drafter, dtype=config.dtype, device=config.drafter_device or config.device,
                      field="drafter")
    check_same_tokenizer(target, LoadedModel(path=model.path, model=model.model, tokenizer=model.tokenizer))
    if model.vocab_size != target.config.vocab_size:
        raise InvalidRequestError("drafter", f"drafter {config.drafter!r} was made for a {model.vocab_size}-token "
                                             f"vocabulary; the target has {target.config.vocab_size}")
    return DiffusionDraftService(model)


def worker_sizes(config: EngineConfig, target_config) -> tuple[int, dict]:
    """(max_model_len, KV-cache sizes) of the workers of one engine: the same for target and drafter."""
    positions = getattr(target_config, "max_position_embeddings", None) or config.max_model_len
    max_model_len = min(config.max_model_len, positions)
    return max_model_len, dict(max_slots=config.max_batch, capacity=max_model_len + config.max_spec_nodes + 1,
                               max_spec_nodes=config.max_spec_nodes)


def build_drafter(config: EngineConfig, target: LoadedModel | ModelInfo) -> ModelWorker | DraftService | None:
    """The drafter `config` names (None for none), checked against the target (weights not needed, except for
    `self`, which shares them): a model worker, or for a block-diffusion drafter its draft service."""
    config = dataclasses.replace(config, drafter=resolve_drafter(config))
    if not config.drafter:
        return None
    dtype = parse_dtype(config.dtype, device=config.drafter_device or config.device)
    max_model_len, sizes = worker_sizes(config, target.config)
    if config.drafter == SELF_DRAFTER:
        # The target drafts for itself: shared weights, a KV cache of its own. Useful to test losslessness with
        # long accepted paths; it is never faster than `ar`.
        if not isinstance(target, LoadedModel):
            target = load_model(target.path, dtype=dtype, device=parse_device(config.drafter_device or config.device,
                                                                              "drafter_device"),
                                field="drafter", cpu_linear=config.cpu_linear)
        return ModelWorker(target, **sizes)
    if is_drafter_folder(config.drafter):
        return _trained_drafter(config, target, dtype, sizes)
    if is_dllm_folder(config.drafter):
        return _diffusion_drafter(config, target)
    drafter_device = parse_device(config.drafter_device or config.device, "drafter_device")
    drafter = load_model(config.drafter, dtype=dtype, device=drafter_device, field="drafter",
                         cpu_linear=config.cpu_linear)
    check_same_tokenizer(target, drafter)
    drafter_positions = getattr(drafter.config, "max_position_embeddings", None) or max_model_len
    if drafter_positions < max_model_len:
        raise InvalidRequestError(
            "drafter", f"drafter context {drafter_positions} is shorter than max_model_len {max_model_len}"
        )
    return ModelWorker(drafter, **sizes)


def build_target(config: EngineConfig, group: GroupSpec | None = None) -> tuple[ModelWorker, LoadedModel]:
    """The target's worker; with `group`, this rank's tensor-parallel shard (the caller's process joins it)."""
    split = group is not None and group.world_size > 1
    if split and config.exact:
        raise exact_with_tp_error()
    # AutoTP replaces the nn.Linear layers, and the exact path its kernels: the transposed CPU matmul would only
    # be undone.
    target = load_model(config.target, dtype=parse_dtype(config.dtype, device=config.device),
                        device=parse_device(config.device), field="target",
                        cpu_linear="off" if split or config.exact else config.cpu_linear)
    if split:  # tp_size was checked against the KV heads before any rank started (cluster/pipeline.py)
        join_group(group)
        target = shard(target, group.world_size)
    head = resolve_exit_head(config, target.config.num_hidden_layers, target.config.hidden_size)
    return ModelWorker(target, exit_head=head, exact=config.exact, **worker_sizes(config, target.config)[1]), target


def build_engine(config: EngineConfig) -> Engine:
    """An Engine over the models `config` names, loaded in this process (the composition root of one process)."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    target_worker, target = build_target(config)
    # After the target: a bad target folder is reported as the target's error, not as a drafter mismatch.
    drafter = build_drafter(config, target)
    return Engine(target_worker, drafter, tokenizer=target.tokenizer, eos_ids=eos_token_ids(target),
                  max_model_len=worker_sizes(config, target.config)[0], max_batch=config.max_batch,
                  max_spec_nodes=config.max_spec_nodes, seed=config.seed,
                  step_cost=step_cost_source(config, target_worker),
                  ngram_corpus=build_ngram_corpus(config, target.tokenizer))


# The modules whose code decides what a target forward costs.
FORWARD_CODE = (attention, exact_attention, exact_attention_kernel, exact_linear, fast_cpu_linear, kv_cache,
                model_worker)


def forward_code_digest() -> str:
    """A digest of FORWARD_CODE's sources: the step-cost cache's key changes with them."""
    digest = hashlib.sha1()
    for module in FORWARD_CODE:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def step_cost_source(config: EngineConfig, target: Worker) -> StepCost | Callable[[], StepCost] | None:
    """The adaptive budget's cost curve as engine.step_cost asks: a table, none, or (auto) a probe of `target`
    whose result is kept in the cache folder for this machine, model and kernels (the code that computes a forward
    included: a new kernel measures again), so that it is measured once (and every later engine there sizes its
    drafts alike); a probe disturbed by other work is used but not kept. Delete the file to measure again."""
    setting = parse_step_cost(config.step_cost)
    if setting != MEASURE:
        return setting
    # At most one row's largest draft per probe, and room in the KV slot for the probe's tokens.
    counts = tuple(k for k in PROBE_COUNTS if k <= config.max_spec_nodes + 1)
    context = max(1, min(128, config.max_model_len - 32))
    key = dict(target=str(config.target), dtype=config.dtype, device=config.device, exact=config.exact,
               threads=torch.get_num_threads(), counts=counts, context=context, torch=torch.__version__,
               cpu=torch.backends.cpu.get_cpu_capability(), cores=os.cpu_count(), host=platform.node(),
               code=forward_code_digest())
    path = cache_dir() / "step_cost" / f"{hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]}.json"

    def probe() -> StepCost:
        try:
            return StepCost.from_points({int(k): v for k, v in json.loads(path.read_text())["cost"].items()})
        except (OSError, ValueError, KeyError, TypeError):
            pass
        cost = measure_step_cost(target, counts=counts, context=context)
        if not cost.steady:  # measured beside other work: good enough for now, not for every later engine
            logger.warning("measured the target's step cost %s while the machine was busy (its forwards disagreed); "
                           "using it in this process only", cost.as_dict())
            return cost
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "cost": cost.as_dict()}, indent=1))
        tmp.replace(path)
        logger.info("measured the target's step cost %s (kept in %s)", cost.as_dict(), path)
        return cost

    return probe
