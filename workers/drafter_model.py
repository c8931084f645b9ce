"""mirrorspec's trained drafters: small Llama models over a reduced draft vocabulary.

Two kinds share one format (a Hugging Face Llama folder plus `mirrorspec_drafter.json`):
  token    a standalone causal LM that needs only token ids (can sit on any device).
  feature  EAGLE-style (arXiv 2401.15077): position p takes the target's hidden state f_p together with the
           embedding of the next token x_{p+1}, through `fc`, and its output hidden state predicts f_{p+1}; the
           head gives x_{p+2}. Deeper draft positions feed the drafter's own output instead of f. With
           `feature_layers` (EAGLE-3, arXiv 2503.01840), f_p is `fuse` over the target's states after those
           layers (each through the target's final norm) and its final state, concatenated.
Both output logits only over the draft vocabulary (the most frequent tokens of the target's own answers,
as FR-Spec and EAGLE-3 do), which keeps the head cheap; the worker scatters them back into the target's
vocabulary (other tokens get -inf, so drafts never propose them; acceptance stays exact). Input ids outside the
draft vocabulary share one extra embedding row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from mirrorspec.workers.kv_cache import ForwardPlan
from mirrorspec.workers.model_worker import ModelWorker
from mirrorspec.workers.models import LoadedModel
from mirrorspec.workers.loading import quiet_loading

META_FILE = "mirrorspec_drafter.json"
FC_FILE = "feature_fc.safetensors"
KINDS = ("token", "feature")


@dataclass
class DrafterMeta:
    kind: str
    target_vocab_size: int
    draft_to_target: list[int]  # draft index -> target token id; index len(draft_to_target) is the OOV input row
    feature_size: int = 0  # width of the target hidden states a feature drafter takes (0 for token drafters)
    # Target layers (states after that many decoder layers) fused with the final state; empty: final state only.
    feature_layers: list[int] = field(default_factory=list)

    @property
    def oov_index(self) -> int:
        return len(self.draft_to_target)

    @property
    def feature_width(self) -> int:
        """Width of the feature vector the target sends per token: its chosen layers' states, then its final one."""
        return self.feature_size * (len(self.feature_layers) + 1)

    def mismatch(self, target_config) -> str | None:
        """Why this drafter cannot serve a target with `target_config` (vocabulary, hidden width, layers), or None."""
        if self.target_vocab_size != target_config.vocab_size:
            return (f"was made for a {self.target_vocab_size}-token vocabulary; the target has "
                    f"{target_config.vocab_size}")
        if self.feature_size and self.feature_size != target_config.hidden_size:
            return (f"takes {self.feature_size}-wide hidden states; the target's are "
                    f"{target_config.hidden_size}")
        layers = target_config.num_hidden_layers
        if any(not 1 <= layer < layers for layer in self.feature_layers):
            return f"reads the states after layers {self.feature_layers}; the target has {layers} layers"
        return None


class Drafter(nn.Module):
    """The trainable module: a Llama over draft ids, plus `fc` for feature drafters."""

    def __init__(self, meta: DrafterMeta, lm: LlamaForCausalLM) -> None:
        super().__init__()
        if meta.kind not in KINDS:
            raise ValueError(f"drafter kind must be one of {KINDS}, got {meta.kind!r}")
        self.meta = meta
        self.lm = lm
        hidden = lm.config.hidden_size
        self.fc = nn.Linear(hidden + meta.feature_size, hidden, bias=False) if meta.kind == "feature" else None
        self.fuse = (nn.Linear(meta.feature_width, meta.feature_size, bias=False)
                     if meta.kind == "feature" and meta.feature_layers else None)
        t2d = torch.full((meta.target_vocab_size,), meta.oov_index, dtype=torch.long)
        t2d[torch.tensor(meta.draft_to_target)] = torch.arange(len(meta.draft_to_target))
        self.register_buffer("target_to_draft", t2d, persistent=False)
        self.register_buffer("draft_to_target", torch.tensor(meta.draft_to_target), persistent=False)

    def input_embeds(self, target_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(self.target_to_draft[target_ids])
        if self.fc is None:
            return embeds
        return self.fc(torch.cat([embeds, self.fused(features.to(embeds.dtype))], dim=-1))

    def fused(self, features: torch.Tensor) -> torch.Tensor:
        """[..., feature_width] target features -> [..., feature_size]; the drafter's own (deeper-position)
        hidden states are already that narrow and pass through."""
        if self.fuse is None or features.shape[-1] != self.meta.feature_width:
            return features
        return self.fuse(features)

    def add_feature_layers(self, layers: list[int]) -> None:
        """Start reading the target's states after `layers` too, through a new `fuse` that picks the final state
        (so the drafter drafts exactly as before until training moves it)."""
        if self.meta.kind != "feature" or self.fuse is not None:
            raise ValueError("only a feature drafter that reads the final state alone can add feature layers")
        self.meta.feature_layers = sorted(set(layers))
        size = self.meta.feature_size
        self.fuse = nn.Linear(self.meta.feature_width, size, bias=False).to(self.fc.weight)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, -size:] = torch.eye(size)

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (the OOV input row is never an output)."""
        return self.lm.get_output_embeddings()(hidden)[..., : len(self.meta.draft_to_target)]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(folder, safe_serialization=True)
        (folder / META_FILE).write_text(json.dumps(asdict(self.meta)))
        if self.fc is not None:
            weights = {"weight": self.fc.weight}
            if self.fuse is not None:
                weights["fuse"] = self.fuse.weight
            save_file({k: w.detach().contiguous() for k, w in weights.items()}, str(folder / FC_FILE))

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> "Drafter":
        folder = Path(folder)
        meta = read_meta(folder)
        with quiet_loading():
            lm = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        drafter = cls(meta, lm).to(dtype)
        if drafter.fc is not None:
            weights = load_file(str(folder / FC_FILE))
            drafter.fc.weight.data.copy_(weights["weight"])
            if drafter.fuse is not None:
                drafter.fuse.weight.data.copy_(weights["fuse"])
        return drafter.eval()


def is_drafter_folder(folder: str | Path) -> bool:
    return (Path(folder) / META_FILE).is_file()


def read_meta(folder: str | Path) -> DrafterMeta:
    """A drafter folder's kind and vocabulary, without loading its weights."""
    return DrafterMeta(**json.loads((Path(folder) / META_FILE).read_text()))


def new_drafter(kind: str, target: LlamaForCausalLM | nn.Module, draft_to_target: list[int], *, layers: int,
                hidden: int, heads: int, kv_heads: int, intermediate: int,
                feature_layers: list[int] | None = None) -> Drafter:
    """A fresh drafter for `target`, initialised from the target's own weights where shapes allow
    (`feature_layers`: feature drafters only, see DrafterMeta)."""
    tcfg = target.config
    meta = DrafterMeta(kind=kind, target_vocab_size=tcfg.vocab_size, draft_to_target=list(draft_to_target),
                       feature_size=tcfg.hidden_size if kind == "feature" else 0)
    config = LlamaConfig(
        vocab_size=len(draft_to_target) + 1, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden // heads, max_position_embeddings=tcfg.max_position_embeddings,
        rms_norm_eps=tcfg.rms_norm_eps, rope_parameters=getattr(tcfg, "rope_parameters", None),
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    lm = LlamaForCausalLM(config)
    drafter = Drafter(meta, lm)
    rows = torch.tensor(draft_to_target)
    with torch.no_grad():
        # One matrix serves as input embedding and head (tied, to stay small); the target's head rows are the
        # better start because the head maps (predicted) target hidden states to tokens.
        t_head = target.get_output_embeddings().weight.float()
        if hidden == tcfg.hidden_size:
            lm.get_input_embeddings().weight[:-1] = t_head[rows]
            lm.get_input_embeddings().weight[-1] = t_head.mean(0)
            lm.model.norm.weight.copy_(target.base_model.norm.weight)
        else:
            # Project the target's vectors of the draft vocabulary onto their top principal directions.
            chosen = t_head[rows]
            _, _, v = torch.pca_lowrank(chosen, q=hidden, center=True)
            projected = (chosen - chosen.mean(0)) @ v[:, :hidden]
            projected *= 0.02 / projected.std()
            lm.get_input_embeddings().weight[:-1] = projected
            lm.get_input_embeddings().weight[-1] = 0.0
        if drafter.fc is not None:
            # Start as "embedding + feature": the identity on each half, halved.
            eye = torch.eye(hidden)
            drafter.fc.weight.copy_(torch.cat([eye, eye], dim=1) * 0.5)
    if feature_layers:
        drafter.add_feature_layers(feature_layers)
    return drafter


class DrafterWorker(ModelWorker):
    """A ModelWorker for a `Drafter`: target ids in, target-vocabulary logits out, features mixed in via fc."""

    def __init__(self, drafter: Drafter, *, max_slots: int, capacity: int, max_spec_nodes: int) -> None:
        super().__init__(LoadedModel(path=None, model=drafter.lm, tokenizer=None), max_slots=max_slots,
                         capacity=capacity, max_spec_nodes=max_spec_nodes)
        self.drafter = drafter
        self.vocab_size = drafter.meta.target_vocab_size
        self.uses_features = drafter.meta.kind == "feature"
        self.feature_layers = tuple(drafter.meta.feature_layers)
        self.feature_width = drafter.meta.feature_width
        self.vocabulary = list(drafter.meta.draft_to_target)

    def _inputs(self, plan: ForwardPlan, features: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        ids = plan.input_ids.to(self.device)
        feats = None
        if self.uses_features:
            if features is None:
                raise ValueError("a feature drafter needs the target's hidden states for every new token")
            feats = torch.zeros(*ids.shape, self.drafter.meta.feature_size, dtype=self.model.dtype,
                                device=self.device)
            for r, f in enumerate(features):  # the target's (wide) features or the drafter's own states
                feats[r, : f.shape[0]] = self.drafter.fused(f.to(self.device, self.model.dtype))
        return {"inputs_embeds": self.drafter.input_embeds(ids, feats)}

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        draft = self.drafter.draft_logits(hidden).float()
        full = torch.full((hidden.shape[0], self.vocab_size), float("-inf"), device=hidden.device)
        full[:, self.drafter.draft_to_target] = draft
        return full
