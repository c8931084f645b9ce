"""Penalties and logprobs under speculation: the repetition and length penalties are applied at every verified
position with that position's own context, so every method's output equals `ar`'s token for token (on the exact
path, bitwise); logprobs, ranks and top-n are the target's, the same bits whichever method committed the token."""

import pytest
import torch
import transformers

from helpers import noisy_copy, tiny_engine, tiny_model
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration import logits_processing
from mirrorspec.orchestration.draft_tree import DraftTree
from mirrorspec.orchestration.sampling import probabilities
from mirrorspec.params import SamplingParams, SpecParams

VOCAB = 96
EOS = 7
PROMPTS = [[5, 9, 14, 3, 22, 7, 5, 9], [7, 20], [60, 2, 33, 19, 8, 8, 90, 11, 4], [1, 2, 3, 1, 2, 3, 1, 2]]
PENALISED = SamplingParams(max_new_tokens=24, repetition_penalty=1.6, length_penalty=(6, 1.4), min_new_tokens=3)
SPECS = [SpecParams(method="chain", gamma=4, adaptive=False),
         SpecParams(method="tree", tree_depth=4, tree_topk=3, tree_nodes=12, adaptive=False),
         SpecParams(method="mirror", gamma=3)]


@pytest.fixture(scope="module")
def models():
    target = tiny_model("llama", VOCAB, seed=1, sharpness=4.0)
    target.model.to(torch.bfloat16)
    return target, noisy_copy(target, 0.3, seed=2)


def generate(models, spec, sampling, batch=4):
    target, drafter = models
    engine = tiny_engine(target, None if spec.method == "ar" else drafter, max_batch=batch, eos_ids=[EOS],
                         exact=True)
    return engine.generate(PROMPTS, sampling, spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.method)
def test_penalised_outputs_equal_ar_token_for_token(models, spec):
    ar = [o.token_ids for o in generate(models, SpecParams("ar"), PENALISED, batch=1)]
    plain = [o.token_ids for o in generate(models, SpecParams("ar"), SamplingParams(max_new_tokens=24), batch=1)]
    assert ar != plain  # the penalties change what is generated
    outs = generate(models, spec, PENALISED)
    assert [o.token_ids for o in outs] == ar
    assert sum(o.stats.accepted for o in outs) > 0


def test_a_penalty_blind_to_the_draft_path_is_caught(models, monkeypatch):
    """Negative control: penalising only the committed context (not the draft tokens above each node) changes
    chain's output, so the test above can fail."""
    sampling = SamplingParams(max_new_tokens=40, repetition_penalty=1.6)
    ar = [o.token_ids for o in generate(models, SpecParams("ar"), sampling, batch=1)]
    original = logits_processing._repetition_penalty
    monkeypatch.setattr(logits_processing, "_repetition_penalty",
                        lambda logits, penalty, context, tree: original(logits, penalty, context, DraftTree()))
    outs = generate(models, SPECS[0], sampling)
    assert [o.token_ids for o in outs] != ar


def test_ar_penalties_match_transformers_processors():
    """`ar` with both penalties chooses what transformers' generate chooses with its own processors (fp32)."""
    target = tiny_model("llama", VOCAB, seed=1, sharpness=4.0)
    sampling = SamplingParams(max_new_tokens=20, repetition_penalty=1.6, length_penalty=(6, 1.4))
    outs = tiny_engine(target, None, eos_ids=[EOS]).generate(PROMPTS, sampling, SpecParams("ar"))
    for prompt, out in zip(PROMPTS, outs):
        hf = target.model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                   repetition_penalty=1.6, exponential_decay_length_penalty=(6, 1.4),
                                   eos_token_id=EOS, pad_token_id=0)
        assert out.token_ids == hf[0, len(prompt):].tolist()


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.method)
def test_logprobs_ranks_and_top_n_are_the_targets_whatever_the_method(models, spec):
    sampling = SamplingParams(max_new_tokens=16, logprobs=3, prompt_logprobs=2, repetition_penalty=1.3)
    ar = generate(models, SpecParams("ar"), sampling, batch=1)
    outs = generate(models, spec, sampling)
    assert sum(o.stats.accepted for o in outs) > 0
    for reference, out in zip(ar, outs):
        assert out.token_ids == reference.token_ids and len(out.logprobs) == len(out.token_ids)
        assert out.logprobs == reference.logprobs  # same bits: equality of floats, not closeness
        # The prompt's, from prefills grouped differently (batch 1 against 4): the same bits too.
        assert len(out.prompt_logprobs) == len(out.prompt_token_ids) - 1
        assert out.prompt_logprobs == reference.prompt_logprobs


def test_logprobs_are_the_models_own_log_softmax():
    """`ar`'s reported numbers against transformers' forward over the whole sequence (fp32)."""
    target = tiny_model("llama", VOCAB, seed=1, sharpness=4.0)
    (out,) = tiny_engine(target, None).generate([PROMPTS[0]], SamplingParams(max_new_tokens=12, logprobs=4,
                                                                             prompt_logprobs=4))
    ids = PROMPTS[0] + out.token_ids
    with torch.no_grad():
        logp = torch.log_softmax(target.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    for i, item in enumerate(out.prompt_logprobs):  # prompt token i + 1, chosen by prompt row i
        assert item.token_id == PROMPTS[0][i + 1]
        assert item.logprob == pytest.approx(float(logp[i, item.token_id]), abs=1e-4)
        assert item.rank == int((logp[i] > logp[i, item.token_id]).sum()) + 1
        assert [t for t, _ in item.top] == torch.topk(logp[i], 4).indices.tolist()
    for i, item in enumerate(out.logprobs):
        row = logp[len(PROMPTS[0]) - 1 + i]
        assert item.token_id == out.token_ids[i] and item.rank == 1  # greedy, no penalty: the top token
        assert item.logprob == pytest.approx(float(row[item.token_id]), abs=1e-4)
        top = torch.topk(row, 4)
        assert [t for t, _ in item.top] == top.indices.tolist()
        assert [v for _, v in item.top] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_a_sampled_request_echoes_its_seed_and_reruns_with_it(models):
    target, _ = models
    engine = tiny_engine(target, None, eos_ids=[EOS])
    (first,) = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12, temperature=1.0))
    again = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12, temperature=1.0, seed=first.seed))
    assert first.seed is not None and again[0].token_ids == first.token_ids
    (greedy,) = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=4))
    assert greedy.seed is None


@pytest.mark.parametrize("kwargs, field", [
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(length_penalty=(-1, 1.5)), "length_penalty.start_index"),
    (dict(length_penalty=(2, 0.5)), "length_penalty.decay_factor"),
    (dict(logprobs=21), "logprobs"),
    (dict(logprobs=-1), "logprobs"),
    (dict(prompt_logprobs=True), "prompt_logprobs"),
])
def test_bad_penalties_and_logprobs_name_the_field(kwargs, field):
    with pytest.raises(InvalidRequestError) as caught:
        SamplingParams(**kwargs).validate()
    assert caught.value.field == field


def test_processors_match_transformers_on_one_row():
    """The transforms themselves, row by row, against transformers' processors on random logits."""
    logits = torch.randn(1, VOCAB) * 3
    context = [4, 9, 9, 30, 12, 40, 41]  # a 2-token prompt and 5 generated tokens
    params = SamplingParams(repetition_penalty=1.7, length_penalty=(2, 1.3))
    ours = logits_processing.process(logits, params, context, generated=5, tree=DraftTree(), eos_ids={EOS})
    ids = torch.tensor([context])
    expected = transformers.RepetitionPenaltyLogitsProcessor(1.7)(ids, logits.clone())
    expected = transformers.ExponentialDecayLengthPenalty((2, 1.3), EOS, input_ids_seq_length=len(context) - 5)(
        ids, expected)
    assert torch.allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize("temperature", [1e30, 1e300])
def test_a_huge_temperature_is_uniform_over_the_allowed_tokens(temperature):
    """A drafter's logits are -inf outside its vocabulary; past float32's range the temperature once divided them
    by inf (NaN, and every draft of such a request failed)."""
    logits = torch.tensor([[2.0, float("-inf"), -3.0, 0.5]])
    probs = probabilities(logits, SamplingParams(temperature=temperature))
    assert torch.equal(probs, torch.tensor([[1 / 3, 0.0, 1 / 3, 1 / 3]]))
