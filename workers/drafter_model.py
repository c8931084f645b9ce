"""mirrorspec's trained drafters: small Llama models over a reduced draft vocabulary.

Two kinds share one format (a Hugging Face Llama folder plus `mirrorspec_drafter.json`):
  token    a standalone causal LM that needs only token ids (can sit on any device).
  feature  EAGLE-style (arXiv 2401.15077): position p takes the target's hidden state f_p together with the
           embedding of the next token x_{p+1}, through `fc`, and its output hidden state predicts f_{p+1}; the
           head gives x_{p+2}. Deeper draft positions feed the drafter's own output instead of f.
Both output logits only over the draft vocabulary (the most frequent tokens of the target's own answers,
as FR-Spec and EAGLE-3 do), which keeps the head cheap; the worker scatters them back into the target's
vocabulary (other tokens get -inf, so drafts never propose them; acceptance stays exact). Input ids outside the
draft vocabulary share one extra embedding row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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

    @property
    def oov_index(self) -> int:
        return len(self.draft_to_target)

    def mismatch(self, target_config) -> str | None:
        """Why this drafter cannot serve a target with `target_config` (vocabulary, hidden width), or None."""
        if self.target_vocab_size != target_config.vocab_size:
            return (f"was made for a {self.target_vocab_size}-token vocabulary; the target has "
                    f"{target_config.vocab_size}")
        if self.feature_size and self.feature_size != target_config.hidden_size:
            return (f"takes {self.feature_size}-wide hidden states; the target's are "
                    f"{target_config.hidden_size}")
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
        t2d = torch.full((meta.target_vocab_size,), meta.oov_index, dtype=torch.long)
        t2d[torch.tensor(meta.draft_to_target)] = torch.arange(len(meta.draft_to_target))
        self.register_buffer("target_to_draft", t2d, persistent=False)
        self.register_buffer("draft_to_target", torch.tensor(meta.draft_to_target), persistent=False)

    def input_embeds(self, target_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(self.target_to_draft[target_ids])
        if self.fc is None:
            return embeds
        return self.fc(torch.cat([embeds, features.to(embeds.dtype)], dim=-1))

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (the OOV input row is never an output)."""
        return self.lm.get_output_embeddings()(hidden)[..., : len(self.meta.draft_to_target)]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(folder, safe_serialization=True)
        (folder / META_FILE).write_text(json.dumps(asdict(self.meta)))
        if self.fc is not None:
            save_file({"weight": self.fc.weight.detach().contiguous()}, str(folder / FC_FILE))

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> "Drafter":
        folder = Path(folder)
        meta = read_meta(folder)
        with quiet_loading():
            lm = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        drafter = cls(meta, lm).to(dtype)
        if drafter.fc is not None:
            drafter.fc.weight.data.copy_(load_file(str(folder / FC_FILE))["weight"])
        return drafter.eval()


def is_drafter_folder(folder: str | Path) -> bool:
    return (Path(folder) / META_FILE).is_file()


def read_meta(folder: str | Path) -> DrafterMeta:
    """A drafter folder's kind and vocabulary, without loading its weights."""
    return DrafterMeta(**json.loads((Path(folder) / META_FILE).read_text()))


def new_drafter(kind: str, target: LlamaForCausalLM | nn.Module, draft_to_target: list[int], *, layers: int,
                hidden: int, heads: int, kv_heads: int, intermediate: int) -> Drafter:
    """A fresh drafter for `target`, initialised from the target's own weights where shapes allow."""
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
    return drafter


class DrafterWorker(ModelWorker):
    """A ModelWorker for a `Drafter`: target ids in, target-vocabulary logits out, features mixed in via fc."""

    def __init__(self, drafter: Drafter, *, max_slots: int, capacity: int, max_spec_nodes: int) -> None:
        super().__init__(LoadedModel(path=None, model=drafter.lm, tokenizer=None), max_slots=max_slots,
                         capacity=capacity, max_spec_nodes=max_spec_nodes)
        self.drafter = drafter
        self.vocab_size = drafter.meta.target_vocab_size
        self.uses_features = drafter.meta.kind == "feature"
        self.vocabulary = list(drafter.meta.draft_to_target)

    def _inputs(self, plan: ForwardPlan, features: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        ids = plan.input_ids.to(self.device)
        feats = None
        if self.uses_features:
            if features is None:
                raise ValueError("a feature drafter needs the target's hidden states for every new token")
            feats = torch.zeros(*ids.shape, self.drafter.meta.feature_size, dtype=self.model.dtype,
                                device=self.device)
            for r, f in enumerate(features):
                feats[r, : f.shape[0]] = f
        return {"inputs_embeds": self.drafter.input_embeds(ids, feats)}

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        draft = self.drafter.draft_logits(hidden).float()
        full = torch.full((hidden.shape[0], self.vocab_size), float("-inf"), device=hidden.device)
        full[:, self.drafter.draft_to_target] = draft
        return full
