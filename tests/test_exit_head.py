"""The early-exit head: the closed-form fit recovers an affine map, it saves and loads, and mirror with a head
stays lossless while its early exit really goes through the head."""

import random

import torch

from helpers import tiny_engine, tiny_model, worker
from mirrorspec.orchestration.engine import Engine
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers.exit_head import ExitHead, ExitHeadMeta, fit


def test_fit_recovers_an_affine_map_and_round_trips(tmp_path):
    torch.manual_seed(0)
    middle = torch.randn(2000, 16) * 3
    weight, bias = torch.randn(16, 16), torch.randn(16)
    normed = middle * torch.rsqrt(middle.pow(2).mean(-1, keepdim=True) + 1e-6)
    w, b = fit(middle, normed @ weight + bias, ridge=1e-9)
    assert torch.allclose(w, weight, atol=1e-3) and torch.allclose(b, bias, atol=1e-3)
    head = ExitHead(ExitHeadMeta(layer=1, hidden_size=16), w, b)
    head.save(tmp_path)
    again = ExitHead.load(tmp_path)
    assert again.meta.layer == 1 and torch.equal(again(middle), head(middle))


def test_mirror_with_an_exit_head_is_lossless_and_uses_it():
    target = tiny_model("llama", 96, seed=1, sharpness=4.0)
    drafter = tiny_model("llama", 96, seed=2, sharpness=4.0)
    hidden = target.model.config.hidden_size
    head = ExitHead(ExitHeadMeta(layer=1, hidden_size=hidden), torch.eye(hidden), torch.zeros(hidden))
    calls = []
    original = ExitHead.__call__
    ExitHead.__call__ = lambda self, h: (calls.append(h.shape[0]), original(self, h))[1]
    try:
        rng = random.Random(0)
        ps = [[rng.randrange(96) for _ in range(rng.randint(1, 20))] for _ in range(4)]
        sampling = SamplingParams(max_new_tokens=12, ignore_eos=True)
        ar = [o.token_ids for o in tiny_engine(target, None).generate(ps, sampling)]
        engine = Engine(worker_with_head(target, head), worker(drafter, 4, 193, 64), max_batch=4, max_model_len=128)
        outs = engine.generate(ps, sampling, SpecParams("mirror", gamma=3))
    finally:
        ExitHead.__call__ = original
    assert [o.token_ids for o in outs] == ar
    assert calls and engine.target.exit_layer == 1


def worker_with_head(loaded, head):
    from mirrorspec.workers.model_worker import ModelWorker

    return ModelWorker(loaded, max_slots=4, capacity=193, max_spec_nodes=64, exit_head=head)
