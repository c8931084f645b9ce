"""An early-exit head for Mirror-SD: an affine map from a middle layer's hidden state to the final one.

The plain logit lens (final norm + LM head applied at layer l_e) ranks the final token poorly half-way up a small
model; an affine translator fitted per layer (the "tuned lens", Belrose et al. 2023, arXiv 2303.08112; LayerSkip
and Kangaroo train similar exits) does much better at the cost of one hidden x hidden matmul per position:
    final_hidden ~ rms(h_le) @ W + b,   logits = lm_head(final_hidden)
(`rms` without weight; the target's final norm is folded into W, b because the fit targets normed states).
A head is a folder: `exit_head.safetensors` (W, b) and `exit_head.json` (layer, hidden size, how it was made).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "exit_head.safetensors"
META = "exit_head.json"


@dataclass
class ExitHeadMeta:
    layer: int
    hidden_size: int
    report: dict = field(default_factory=dict)


@dataclass
class ExitHead:
    meta: ExitHeadMeta
    weight: torch.Tensor  # [H, H]
    bias: torch.Tensor  # [H]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Middle-layer hidden states [n, H] -> estimates of the final normed hidden states [n, H]."""
        x = _rms(hidden.float())
        return (x @ self.weight.to(x.device) + self.bias.to(x.device)).to(hidden.dtype)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(folder / WEIGHTS))
        (folder / META).write_text(json.dumps(asdict(self.meta), indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> "ExitHead":
        folder = Path(folder)
        meta = ExitHeadMeta(**json.loads((folder / META).read_text()))
        tensors = load_file(str(folder / WEIGHTS))
        return cls(meta, tensors["weight"].float(), tensors["bias"].float())


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit root-mean-square (RMSNorm without its weight)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def is_exit_head_folder(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file()


def fit(middle: torch.Tensor, final: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares (ridge) W, b with rms(middle) @ W + b ~ final, in closed form."""
    x = _rms(middle.double())
    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    gram = x.T @ x
    gram += ridge * x.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype)
    solution = torch.linalg.solve(gram, x.T @ final.double())
    return solution[:-1].float(), solution[-1].float()
