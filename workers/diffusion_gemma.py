"""transformers' DiffusionGemma block-diffusion models, decoded by their own `generate`.

DiffusionGemma is not a masked-diffusion LM: an encoder reads the committed tokens, a decoder refines a canvas of
`canvas_length` tokens that starts as random tokens (uniform noise, no mask token), with self-conditioning and
transformers' entropy-bound sampler, which accepts, renoises and stops per canvas. The mask-based strategies of
orchestration/diffusion.py do not apply to it, so this runner maps the request onto that sampler (canvas length =
block length, steps = max_denoising_steps, temperature = a constant temperature schedule) and refuses the
mask-only options by name. Committed canvases are streamed as they are accepted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.params import DiffusionParams
from mirrorspec.workers.diffusion_model import DiffusionOutput
from mirrorspec.workers.loading import quiet_loading

MODEL_TYPE = "diffusion_gemma"
_MASK_ONLY = {"strategy": "threshold", "threshold": 0.9, "factor": 1.0, "adaptive_blocks": False,
              "early_commit": False, "cache": "none"}


def is_diffusion_gemma(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == MODEL_TYPE


class _BlockStreamer:
    """transformers' streamer protocol: `put` gets the prompt first, then each accepted canvas."""

    def __init__(self, on_block: Callable[[list[int]], None] | None) -> None:
        self.on_block = on_block
        self.puts = 0

    def put(self, ids: torch.Tensor) -> None:
        self.puts += 1
        if self.puts > 1 and self.on_block is not None:
            self.on_block(ids[0].tolist())

    def end(self) -> None:
        pass


class DiffusionGemmaLM:
    def __init__(self, folder: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

        self.path = Path(folder)
        with quiet_loading():
            self.model = DiffusionGemmaForBlockDiffusion.from_pretrained(folder, dtype=dtype, local_files_only=True)
        self.model = self.model.to(device).eval()
        has_tokenizer = (self.path / "tokenizer.json").is_file() or (self.path / "tokenizer.model").is_file()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True) if has_tokenizer else None
        text = self.model.config.text_config
        self.vocab_size = text.vocab_size
        self.canvas_length = self.model.config.canvas_length
        self.eos_ids = tuple(text.eos_token_id if isinstance(text.eos_token_id, list) else [text.eos_token_id])
        self.pad_id = text.pad_token_id

    def check(self, params: DiffusionParams) -> None:
        params.validate()
        for name, default in _MASK_ONLY.items():
            if getattr(params, name) != default:
                raise InvalidRequestError(name, f"{self.path} is a DiffusionGemma model: it decodes with its own "
                                                f"entropy-bound sampler, which has no {name}")
        if params.block_length != self.canvas_length:
            raise InvalidRequestError("block_length", f"{self.path} denoises canvases of {self.canvas_length} "
                                                      f"tokens; got {params.block_length}")

    @torch.inference_mode()
    def generate(self, prompt: list[int], params: DiffusionParams,
                 on_block: Callable[[list[int]], None] | None = None) -> DiffusionOutput:
        self.check(params)
        if not prompt:
            raise InvalidRequestError("prompt", "is empty")
        options = {"max_new_tokens": params.gen_length, "return_dict_in_generate": True}
        if params.steps is not None:
            options["max_denoising_steps"] = params.steps
        if params.temperature > 0:  # 0 keeps the model's own temperature schedule
            options.update(t_min=params.temperature, t_max=params.temperature)
        torch.manual_seed(params.seed)  # its sampler draws from torch's global generator
        started = time.perf_counter()
        out = self.model.generate(torch.tensor([prompt], device=self.model.device),
                                  streamer=_BlockStreamer(on_block), **options)
        new = out.sequences[0, len(prompt):].tolist()
        ends = [k for k, token in enumerate(new) if token in self.eos_ids] if params.stop_at_eos else []
        tokens = new[: ends[0] + 1] if ends else new
        # tokens_per_forward counts the tokens that are not padding (after EOS) per denoising forward.
        valid = sum(token != self.pad_id for token in new)
        per_forward = float(out.tokens_per_forward[0])
        return DiffusionOutput(tokens, "eos" if ends else "length",
                               forwards=round(valid / per_forward) if per_forward else 0,
                               blocks=[self.canvas_length] * (len(new) // self.canvas_length),
                               seconds=time.perf_counter() - started)
