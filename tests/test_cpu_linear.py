"""The transposed CPU linear computes the same products as nn.Linear (fp32 rounding aside)."""

import pytest
import torch
from torch import nn

from mirrorspec.workers import cpu_linear


@pytest.mark.parametrize("rows", [1, 2, 7, cpu_linear.MAX_ROWS, cpu_linear.MAX_ROWS + 5])
@pytest.mark.parametrize("bias", [False, True])
def test_transposed_forward_matches_linear(rows, bias):
    torch.manual_seed(rows)
    layer = nn.Linear(48, 80, bias=bias)
    x = torch.randn(3, rows, 48)
    expected = layer(x)
    assert cpu_linear.apply(layer, "on")
    got = layer(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_modes():
    layer = nn.Linear(4, 4)
    assert not cpu_linear.apply(layer, "off")
    with pytest.raises(ValueError, match="cpu_linear"):
        cpu_linear.apply(layer, "fast")
    assert not cpu_linear.apply(nn.Linear(4, 4).to(torch.float64), "on")  # fp32 only
