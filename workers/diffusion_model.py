"""Masked-diffusion language models: the "predict every masked position" forward.

A masked-diffusion LM (LLaDA, Dream, this project's own dLLMs) sees the whole sequence with bidirectional
attention, masked positions included, and predicts a token for every position at once. Two kinds load here:
- this project's dLLMs: a transformers causal-LM architecture (Llama, ...) run with a full (non-causal) attention
  mask, described by `mirrorspec_dllm.json` (mask token, shifted logits);
- LLaDA and Dream checkpoints in a local folder, with their own remote code, only when the caller allows it
  (`--trust-remote-code`): their forwards are bidirectional by themselves.
Dream-style models predict token i+1 at position i (they were adapted from AR models), so their logits are shifted
right by one (Dream's `generation_utils.py`); LLaDA-style ones predict position i at position i.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.cache_utils import Cache

from mirrorspec.errors import InvalidRequestError
from mirrorspec.workers.models import load_tokenizer, parse_dtype, resolve_model_dir
from mirrorspec.workers.loading import quiet_loading

META_FILE = "mirrorspec_dllm.json"
# Remote-code dLLMs this runner knows: model_type -> (mask token id when the config has none, shifted logits).
REMOTE_KINDS = {"llada": (126336, False), "Dream": (151666, True)}


@dataclass(frozen=True)
class DllmMeta:
    mask_token_id: int
    shifted: bool = False  # position i predicts token i+1 (Dream); else token i (LLaDA)
    # A reduced vocabulary: row k of the model is tokenizer id vocab[k] (row len(vocab): any other id, never
    # predicted). None: the model's rows are the tokenizer's ids.
    vocab: list[int] | None = None
    target_vocab_size: int | None = None  # the tokenizer's size, when `vocab` is reduced
    # > 0: a block-diffusion drafter (orchestration/diffusion_draft.py): committed tokens attend causally, and a
    # window of this many masks after them attends to them and to itself. 0: a dLLM with full attention.
    draft_window: int = 0


@dataclass
class DiffusionOutput:
    """What decoding one sequence gave (orchestration/diffusion.py, or a DiffusionGemma's own sampler)."""

    token_ids: list[int]
    finish_reason: str  # eos | length
    forwards: int  # model forwards this sequence took part in
    blocks: list[int] = field(default_factory=list)  # committed block lengths, in order
    seconds: float = 0.0

    @property
    def forwards_per_token(self) -> float:
        return self.forwards / max(1, len(self.token_ids))


@dataclass
class ContextKV:
    """Keys and values of context positions from an earlier forward, every layer stacked: [layers, B, H, C, D],
    and which columns are real ([B, C]; False: padding)."""

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor


def pad_contexts(contexts: list[ContextKV | None]) -> ContextKV | None:
    """One batch's context from each row's own ([layers, 1, H, C_row, D]; None: no context yet), left-padded to
    the longest; None when no row has one."""
    known = [c for c in contexts if c is not None]
    if not known:
        return None
    layers, _, heads, _, dim = known[0].keys.shape
    width = max(c.keys.shape[3] for c in known)
    keys = known[0].keys.new_zeros((layers, len(contexts), heads, width, dim))
    values = torch.zeros_like(keys)
    valid = torch.zeros((len(contexts), width), dtype=torch.bool, device=keys.device)
    for k, context in enumerate(contexts):
        if context is not None:
            n = context.keys.shape[3]
            keys[:, k, :, width - n:] = context.keys[:, 0]
            values[:, k, :, width - n:] = context.values[:, 0]
            valid[k, width - n:] = True
    return ContextKV(keys, values, valid)


class _ContextCache(Cache):
    """What transformers sees as the cache of one forward: each layer attends to the given context K/V (if any)
    followed by the forward's own K/V, which are kept (to cut a later context from) but never written into the
    context: Fast-dLLM's approximate cache reuses K/V computed at a block's start without updating them."""

    def __init__(self, context: ContextKV | None) -> None:
        super().__init__(layers=[])
        self.context = context
        self.new_keys: list[torch.Tensor] = []
        self.new_values: list[torch.Tensor] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.new_keys.append(key_states)
        self.new_values.append(value_states)
        if self.context is None:
            return key_states, value_states
        return (torch.cat([self.context.keys[layer_idx], key_states], dim=2),
                torch.cat([self.context.values[layer_idx], value_states], dim=2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.context is None else self.context.keys.shape[3]


def bidirectional_logits(model: PreTrainedModel, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """A causal-LM architecture run bidirectionally: every query sees every real key (a padding query sees only
    itself, so that no row is empty); positions count real tokens only. Differentiable (training uses it)."""
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    eye = torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
    see = valid[:, None, :] | eye[None]
    return model(input_ids=ids, attention_mask=see[:, None], position_ids=positions).logits


class DiffusionLM:
    def __init__(self, model: PreTrainedModel, meta: DllmMeta, *, own: bool, tokenizer=None, path=None) -> None:
        self.model = model.eval()
        self.meta = meta
        self.own = own  # a causal-LM architecture made bidirectional by the mask this runner passes
        self.tokenizer = tokenizer
        self.path = path
        self.vocab_size = meta.target_vocab_size or (model.get_output_embeddings().weight.shape[0] if own
                                                     else model.config.vocab_size)
        self.device = next(model.parameters()).device
        self.token_rows = None  # tokenizer id -> model row, for a reduced vocabulary
        self._mask_column = meta.mask_token_id
        if meta.vocab:
            self._vocab = torch.tensor(meta.vocab, device=self.device)
            self.token_rows = torch.full((self.vocab_size,), len(meta.vocab), dtype=torch.long, device=self.device)
            self.token_rows[self._vocab] = torch.arange(len(meta.vocab), device=self.device)
            self._mask_column = meta.vocab.index(meta.mask_token_id)

    @property
    def config(self):
        return self.model.config

    @property
    def mask_id(self) -> int:
        return self.meta.mask_token_id

    @property
    def supports_cache(self) -> bool:
        """Fast-dLLM's caches need a forward that takes context K/V: this runner's own dLLMs (transformers
        architectures); LLaDA / Dream remote code has its own cache interface, which this runner does not drive."""
        return self.own

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, L, C] float32 predicting the token AT each position, the token id of each column C or
        None when the columns are the token ids). `valid` [B, L] marks real positions (False: left padding,
        never attended to and not counted in positions). A reduced-vocabulary model returns its own columns
        (the tokenizer's other ids are impossible), not a tokenizer-wide tensor of -inf."""
        ids, valid = ids.to(self.device), valid.to(self.device)
        if self.own:
            out = bidirectional_logits(self.model, self.model_rows(ids), valid)
        else:
            out = self.model(ids, attention_mask=valid.long()).logits
        return self._finish(out)

    @torch.inference_mode()
    def logits_in_context(self, ids: torch.Tensor, positions: torch.Tensor, see: torch.Tensor,
                          context: ContextKV | None = None) -> tuple[torch.Tensor, torch.Tensor | None, ContextKV]:
        """A forward over some positions only: `ids`, `positions` [B, Q]; `see` [B, Q, Q] which of these
        queries each query attends to; every query also attends to every real column of `context`. Returns
        (logits as `logits` does, columns, the K/V of the Q new positions)."""
        if not self.supports_cache:
            raise InvalidRequestError("cache", f"{self.path} runs its own remote code; approximate KV caches need "
                                               f"one of this project's dLLMs")
        ids, positions, see = ids.to(self.device), positions.to(self.device), see.to(self.device)
        mask = see
        if context is not None:
            seen = context.valid.to(self.device)[:, None, :].expand(-1, ids.shape[1], -1)
            mask = torch.cat([seen, see], dim=2)
        cache = _ContextCache(context)
        out = self.model(input_ids=self.model_rows(ids), attention_mask=mask[:, None], position_ids=positions,
                         cache=cache, use_cache=True).logits
        new = ContextKV(torch.stack(cache.new_keys), torch.stack(cache.new_values),
                        torch.ones(ids.shape, dtype=torch.bool, device=self.device))
        return (*self._finish(out), new)

    def model_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Tokenizer ids -> the model's input rows (the same ids unless the vocabulary is reduced)."""
        return ids if self.token_rows is None else self.token_rows[ids]

    def _finish(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        columns = None
        if self.token_rows is not None:
            out, columns = out[..., : len(self.meta.vocab)], self._vocab
        out = out.float()
        if self.meta.shifted:
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        # The mask token is never a prediction: committing it would leave the position masked for ever.
        out[..., self._mask_column] = float("-inf")
        return out, columns


def is_dllm_folder(folder: str | Path) -> bool:
    return (Path(folder) / META_FILE).is_file()


def save_dllm(model: PreTrainedModel, meta: DllmMeta, folder: str | Path, tokenizer=None) -> None:
    folder = Path(folder)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / META_FILE).write_text(json.dumps(asdict(meta), indent=2))


def load_dllm(path: str, *, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
              field: str = "target") -> DiffusionLM:
    """A masked-diffusion LM from a local folder; anything else is refused, naming `field`."""
    folder = resolve_model_dir(path, field)
    torch_dtype = parse_dtype(dtype, device=device)
    if is_dllm_folder(folder):
        meta = DllmMeta(**json.loads((folder / META_FILE).read_text()))
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, local_files_only=True,
                                                         attn_implementation="sdpa")
        return DiffusionLM(model.to(device), meta, own=True, tokenizer=load_tokenizer(folder), path=folder)
    # Read as plain JSON: transformers cannot parse a remote-code config before the code is trusted.
    config = json.loads((folder / "config.json").read_text())
    model_type = config.get("model_type")
    kind = REMOTE_KINDS.get(model_type)
    if kind is None:
        raise InvalidRequestError(field, f"{str(folder)!r} is not a masked-diffusion model (no {META_FILE}, and "
                                         f"model_type {model_type!r} is none of {', '.join(REMOTE_KINDS)})")
    if not trust_remote_code:
        raise InvalidRequestError("trust_remote_code", f"{str(folder)!r} is a {model_type} model that runs its own "
                                                       f"code from the folder; pass --trust-remote-code")
    mask_id = config.get("mask_token_id") or kind[0]
    with quiet_loading():
        model = AutoModel.from_pretrained(folder, dtype=torch_dtype, local_files_only=True, trust_remote_code=True)
    tokenizer = load_tokenizer(folder, trust_remote_code=True)
    return DiffusionLM(model.to(device), DllmMeta(mask_id, kind[1]), own=False, tokenizer=tokenizer, path=folder)
