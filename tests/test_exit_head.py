"""The early-exit head: the closed-form fit recovers an affine map, it saves and loads, and mirror with a head
stays lossless while its early exit really goes through the head."""

import random

import torch

from helpers import tiny_engine, tiny_model, worker
from mirrorspec.orchestration.engine import Engine
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers.exit_head import ExitHead, ExitHeadMeta, fit
from mirrorspec.workers.interface import EarlyExit


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


def test_the_early_exit_gives_each_rows_logit_lens_top_kappa():
    """Mid-forward, for every row: the top-kappa tokens and log-probabilities of the final norm and LM head
    applied after `layer` layers, at exactly the row's first `positions[r]` outputs (the last committed token,
    then the window), as transformers' own forward computes them."""
    target = tiny_model("llama", 96, seed=3, sharpness=4.0)
    w = worker(target, 4, 128, 16)
    prompts, windows = [[5, 9, 14, 3], [7, 7, 20]], [[11, 40, 2], [33, 8]]
    for seq, prompt in enumerate(prompts):
        w.open(seq)
        w.forward([seq], [prompt[:-1]])
    got = []
    w.forward_hidden([0, 1], [[p[-1]] for p in prompts], windows, [list(range(-1, len(x) - 1)) for x in windows],
                     early_exit=EarlyExit(layer=1, positions=[4, 2], kappa=5, callback=got.extend))
    for prompt, window, count, (ids, logprobs) in zip(prompts, windows, [4, 2], got):
        with torch.no_grad():
            states = target.model(torch.tensor([prompt + window]), output_hidden_states=True).hidden_states[1]
            lens = target.model.lm_head(target.model.model.norm(states[0, len(prompt) - 1:][:count]))
        expected = torch.topk(torch.log_softmax(lens.float(), dim=-1), 5, dim=-1)
        assert ids.shape == (count, 5) and torch.equal(ids, expected.indices)
        assert torch.allclose(logprobs, expected.values, atol=1e-4)

