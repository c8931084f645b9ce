"""Loading local Hugging Face causal-LM folders (or the embedded default) with their tokenizer.

Nothing here downloads: every load uses `local_files_only=True`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mirrorspec.errors import InvalidRequestError
from mirrorspec.workers import cpu_linear as fast_cpu_linear
from mirrorspec.workers.default_model import ensure_default_model
from mirrorspec.workers.loading import quiet_loading

logger = logging.getLogger(__name__)

DEFAULT = "default"
# Families whose attention, masks and positions the engine's KV cache has been tested with (tests/test_kv_cache.py).
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


AUTO = "auto"


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively: CUDA with bf16, or a CPU with AVX-512-BF16 or AMX. Elsewhere
    PyTorch emulates them and a product of several rows costs 4-7x its fp32 one (an AVX2 CPU:
    bench/results/issue16-exactness-probe.md), so speculation's multi-token verify would lose its point."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def parse_dtype(name: str, field: str = "dtype", device: str = "cpu") -> torch.dtype:
    """A dtype name; `auto` is bfloat16 where `device` has native bf16 and float32 elsewhere."""
    if name.lower() == AUTO:
        return torch.bfloat16 if has_native_bf16(parse_device(device)) else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InvalidRequestError(field, f"unknown dtype {name!r}; choose auto or one of "
                                         f"{sorted(set(DTYPES))}") from None


def parse_device(name: str, field: str = "device") -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidRequestError(field, f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(field, f"device {name!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise InvalidRequestError(field, f"device type {device.type!r} is not supported; use cpu or cuda")
    return device


def resolve_model_dir(path: str | Path, field: str) -> Path:
    """`default` -> the converted embedded model; anything else must be a local HF model folder."""
    if str(path) == DEFAULT:
        return ensure_default_model()
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InvalidRequestError(field, f"model folder {str(path)!r} does not exist")
    if not (folder / "config.json").is_file():
        raise InvalidRequestError(field, f"{str(path)!r} is not a Hugging Face model folder (no config.json)")
    return folder


@dataclass
class LoadedModel:
    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None

    @property
    def config(self):
        return self.model.config


@dataclass
class ModelInfo:
    """A model folder's config and tokenizer without its weights (what a drafter is checked against)."""

    path: Path
    config: object
    tokenizer: PreTrainedTokenizerBase | None


def load_model_info(path: str | Path, field: str = "target") -> ModelInfo:
    folder = resolve_model_dir(path, field)
    return ModelInfo(folder, AutoConfig.from_pretrained(folder, local_files_only=True), load_tokenizer(folder))


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase | None:
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # a weights-only folder (e.g. a tiny test model) has no tokenizer
        logger.info("no tokenizer in %s (%s); the model takes token ids only", path, exc)
        return None


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    field: str = "target",
    attn_implementation: str = "sdpa",
    cpu_linear: str = "auto",
) -> LoadedModel:
    folder = resolve_model_dir(path, field)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise InvalidRequestError(
            field, f"model type {config.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=True, attn_implementation=attn_implementation
        )
    model.to(torch.device(device)).eval()
    model.requires_grad_(False)
    if fast_cpu_linear.apply(model, cpu_linear):
        logger.info("%s: few-token CPU linears use the transposed product", field)
    return LoadedModel(path=folder, model=model, tokenizer=load_tokenizer(folder))


def check_same_tokenizer(target: LoadedModel | ModelInfo, drafter: LoadedModel, field: str = "drafter") -> None:
    """A drafter must speak the target's token ids: same vocabulary and the same special tokens."""
    t_tok, d_tok = target.tokenizer, drafter.tokenizer
    if t_tok is None or d_tok is None:
        # Token-id-only models (tests): the vocabulary sizes are the only thing to compare.
        same = target.config.vocab_size == drafter.config.vocab_size
        detail = f"vocab size {drafter.config.vocab_size} vs the target's {target.config.vocab_size}"
    else:
        # The ids that decoding depends on; the full special-token lists differ between transformers versions
        # loading the same tokenizer (a GGUF-converted one lists fewer), which is no reason to refuse a drafter.
        roles = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
        same = t_tok.get_vocab() == d_tok.get_vocab() and all(
            getattr(t_tok, r) == getattr(d_tok, r) for r in roles)
        detail = (f"vocabulary of {len(d_tok)} tokens vs the target's {len(t_tok)} "
                  f"(or different {', '.join(r.removesuffix('_id') for r in roles)})")
    if not same:
        raise InvalidRequestError(
            field, f"drafter {str(drafter.path)!r} does not share the target's tokenizer: {detail}"
        )
