"""Tiny random models and engines for fast tests (token ids only, no tokenizer)."""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import transformers

from mirrorspec.orchestration.engine import Engine
from mirrorspec.workers.cpu_linear import apply as apply_cpu_linear
from mirrorspec.workers.model_worker import ModelWorker
from mirrorspec.workers.models import LoadedModel

_COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512)

# Small sliding windows so that tests cross them.
FAMILIES = {
    "llama": lambda v: transformers.LlamaConfig(vocab_size=v, **_COMMON),
    "qwen2": lambda v: transformers.Qwen2Config(vocab_size=v, **_COMMON),
    "qwen3": lambda v: transformers.Qwen3Config(vocab_size=v, head_dim=8, **_COMMON),
    "mistral": lambda v: transformers.MistralConfig(vocab_size=v, sliding_window=12, **_COMMON),
    "gemma3": lambda v: transformers.Gemma3TextConfig(
        vocab_size=v, head_dim=8, sliding_window=6, layer_types=["sliding_attention", "full_attention"], **_COMMON
    ),
    "gemma2": lambda v: transformers.Gemma2Config(
        vocab_size=v, head_dim=8, sliding_window=6, layer_types=["sliding_attention", "full_attention"], **_COMMON
    ),
}


def tiny_model(family: str = "llama", vocab: int = 64, seed: int = 0, sharpness: float = 1.0,
               cpu_linear: str = "off") -> LoadedModel:
    """A random model; `sharpness` scales the output head so distributions are peaked, as a trained model's are."""
    torch.manual_seed(seed)
    config = FAMILIES[family](vocab)
    attn = "eager" if family == "gemma2" else "sdpa"  # Gemma 2 soft-caps attention logits: eager only
    config._attn_implementation = attn
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(sharpness)
    model.requires_grad_(False)
    apply_cpu_linear(model, cpu_linear)
    return LoadedModel(path=None, model=model, tokenizer=None)


def noisy_copy(loaded: LoadedModel, noise: float, seed: int = 0) -> LoadedModel:
    """The same model with Gaussian noise of `noise` times each weight tensor's own spread added: a drafter that
    agrees with it often but not always, so drafts are accepted to various depths and then rejected."""
    model = copy.deepcopy(loaded.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * param.std() * noise)
    return LoadedModel(path=None, model=model, tokenizer=None)


def worker(loaded: LoadedModel, slots: int = 8, capacity: int = 256, spec: int = 64) -> ModelWorker:
    return ModelWorker(loaded, max_slots=slots, capacity=capacity, max_spec_nodes=spec)


def tiny_engine(target: LoadedModel, drafter: LoadedModel | None, *, max_batch: int = 8, eos_ids=(),
                max_model_len: int = 128, max_spec_nodes: int = 64, exact: bool = False, step_cost=None,
                ngram_corpus=None) -> Engine:
    cap = max_model_len + max_spec_nodes + 1
    return Engine(
        ModelWorker(target, max_slots=max_batch, capacity=cap, max_spec_nodes=max_spec_nodes, exact=exact),
        None if drafter is None else worker(drafter, max_batch, cap, max_spec_nodes),
        eos_ids=eos_ids, max_model_len=max_model_len, max_batch=max_batch, max_spec_nodes=max_spec_nodes,
        step_cost=step_cost, ngram_corpus=ngram_corpus,
    )


class FlakyDrafter:
    """Wraps a worker; its forward raises on chosen calls (a drafter that dies or times out)."""

    def __init__(self, inner, fail_calls):
        self.inner, self.fail_calls, self.calls = inner, set(fail_calls), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward_hidden(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise RuntimeError("drafter lost")
        return self.inner.forward_hidden(*args, **kwargs)


def run_by_step(engine, ps, sampling, spec):
    """Generate step by step: (each prompt's final output, per step the tokens each request committed in it)."""
    ids = [engine.add_request(p, sampling, spec) for p in ps]
    final, steps = {}, []
    while engine.has_unfinished():
        outs = engine.step()
        steps.append({o.request_id: len(o.new_token_ids) for o in outs})
        final.update({o.request_id: o for o in outs if o.finished})
    return [final[i] for i in ids], steps


def reference_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Next-token logits recomputed from scratch by transformers' own forward."""
    with torch.no_grad():
        return loaded.model(torch.tensor([ids])).logits[0, -1].float()


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0, what: str = "condition not reached",
               period_s: float = 0.02) -> None:
    """Poll `condition` until it holds; fail the test if it has not after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(period_s)
