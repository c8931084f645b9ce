"""A mirrorspec token drafter as a full-vocabulary transformers model, for `generate(assistant_model=...)`.

transformers' assisted generation needs an assistant that reads and writes the target's token ids. A token
drafter is a Llama over a reduced draft vocabulary: this subclass maps ids in and scatters logits out (tokens
outside the draft vocabulary get -inf, exactly as in mirrorspec's own drafting), so both engines run the same
drafter. Feature drafters need the target's hidden states, which transformers cannot supply.
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from mirrorspec.errors import InvalidRequestError
from mirrorspec.workers.drafter_model import Drafter, is_drafter_folder, read_meta


class DraftVocabLlama(LlamaForCausalLM):
    def forward(self, input_ids=None, **kwargs):
        out = super().forward(input_ids=self.target_to_draft[input_ids], **kwargs)
        draft = out.logits[..., : self.draft_to_target.shape[0]]
        full = draft.new_full((*draft.shape[:-1], self.target_vocab), float("-inf"))
        full[..., self.draft_to_target] = draft
        out.logits = full
        return out


def check_assistant(folder: str | None) -> None:
    """Before any method runs: refuse an assistant that transformers' assisted generation cannot run."""
    if folder is None:
        raise InvalidRequestError("hf_assistant", "hf-assisted needs an assistant: pass --hf-assistant DIR (a token "
                                                  "drafter or a plain model folder), or a --drafter")
    if is_drafter_folder(folder) and read_meta(folder).kind != "token":
        raise InvalidRequestError(
            "hf_assistant", f"{folder} is a feature-conditioned drafter, which transformers' assisted generation "
            "cannot run (it needs the target's hidden states); pass --hf-assistant with a token drafter (e.g. "
            "drafters/smollm2-135m-token) or a plain model folder")


def draft_vocab_assistant(folder: str, dtype: torch.dtype, device: torch.device) -> DraftVocabLlama:
    check_assistant(folder)
    drafter = Drafter.load(folder, dtype)
    model = DraftVocabLlama(drafter.lm.config).to(dtype)
    model.load_state_dict(drafter.lm.state_dict())
    model.generation_config = drafter.lm.generation_config
    model.target_to_draft = drafter.target_to_draft.to(device)
    model.draft_to_target = drafter.draft_to_target.to(device)
    model.target_vocab = drafter.meta.target_vocab_size
    # transformers compares vocab sizes to decide whether both models share a tokenizer; this one reads and
    # writes the target's ids, so it declares the target's size (the embedding keeps its draft-vocabulary rows).
    model.config.vocab_size = drafter.meta.target_vocab_size
    return model.to(device).eval()
