"""End-to-end on the embedded SmolLM2-135M-Instruct (fp32, CPU): lossless greedy decoding and model checks."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mirrorspec.bench.harness import load_prompts
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.factory import build_engine
from mirrorspec.orchestration.factory import DEFAULT_DIFFUSION_DRAFTER_DIR
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers.default_model import ensure_default_model
from mirrorspec.workers.models import DEFAULT, load_model


pytestmark = pytest.mark.real_model

NEW_TOKENS = 20
# Whole drafts (adaptive off): these check verification itself, with long accepted paths; the adaptive budget,
# which may verify less, has its own tests (tests/test_spec_budget.py).
SPECS = {
    "chain": SpecParams(method="chain", gamma=4, adaptive=False),
    "tree": SpecParams(method="tree", tree_depth=3, tree_topk=3, tree_nodes=8, adaptive=False),
}


@pytest.fixture(scope="module")
def engine():
    # float32 on any CPU (dtype auto would take bf16 on one with native bf16): compared with transformers below.
    return build_engine(EngineConfig(drafter="self", max_batch=4, dtype="float32"))


@pytest.fixture(scope="module")
def trained_engine():
    """The shipped feature drafter (drafters/smollm2-135m-feature) with the default target."""
    return build_engine(EngineConfig(drafter="default", max_batch=4, dtype="float32"))


@pytest.fixture(scope="module")
def bench_prompts():
    rows = load_prompts(None, per_category=1)  # one per category: 13 prompts
    assert len({r["category"] for r in rows}) >= 10
    return [r["prompt"] for r in rows]


@pytest.fixture(scope="module")
def ar_outputs(engine, bench_prompts):
    # Batch 4: the exact path gives the same bits at any batch size (tests/test_exact.py checks it on this model).
    engine.scheduler.max_batch = 4
    outs = engine.generate(bench_prompts, SamplingParams(max_new_tokens=NEW_TOKENS), SpecParams(method="ar"), chat=True)
    return [o.token_ids for o in outs]


def test_ar_matches_transformers_generate(engine, bench_prompts, ar_outputs):
    """The engine's own KV cache, masks and exact kernels reproduce transformers' greedy decoding (a fresh copy
    of the model with its stock kernels)."""
    model, tok = load_model(DEFAULT, dtype=torch.float32, cpu_linear="off").model, engine.tokenizer
    for prompt, ours in list(zip(bench_prompts, ar_outputs))[:3]:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, do_sample=False, max_new_tokens=NEW_TOKENS,
                                 eos_token_id=sorted(engine.eos_ids), pad_token_id=tok.pad_token_id)
        assert out[0, ids["input_ids"].shape[1]:].tolist() == ours


# Batch 4 only: batch 1 and every batch size are checked on tiny models (test_engine.py); the suite's time limit.
# Chain on the even categories' prompts, tree on the odd ones: together every category (the bench checks all 26).
@pytest.mark.parametrize("method", sorted(SPECS))
def test_trained_drafter_is_token_identical_to_ar(trained_engine, bench_prompts, ar_outputs, method):
    trained_engine.scheduler.max_batch = 4
    half = slice(sorted(SPECS).index(method), None, 2)
    outs = trained_engine.generate(bench_prompts[half], SamplingParams(max_new_tokens=NEW_TOKENS), SPECS[method],
                                   chat=True)
    assert [o.token_ids for o in outs] == ar_outputs[half]
    assert sum(o.stats.accepted for o in outs) > 0.3 * sum(o.stats.target_forwards for o in outs)
    assert all(o.text for o in outs)


def test_diffusion_drafter_is_token_identical_to_ar(bench_prompts, ar_outputs):
    """The shipped block-diffusion drafter (drafters/smollm2-135m-ddraft): one forward drafts the whole tree. Every
    other category's prompt (the suite's time limit; bench/results/issue6-diffusion-draft.json checks all 26)."""
    engine = build_engine(EngineConfig(drafter=str(DEFAULT_DIFFUSION_DRAFTER_DIR), max_batch=4, dtype="float32"))
    spec = SpecParams(method="diffusion-draft", tree_depth=4, tree_topk=3, tree_nodes=10, adaptive=False)
    outs = engine.generate(bench_prompts[::2], SamplingParams(max_new_tokens=NEW_TOKENS), spec, chat=True)
    assert [o.token_ids for o in outs] == ar_outputs[::2]
    assert sum(o.stats.accepted for o in outs) > 0.1 * sum(o.stats.target_forwards for o in outs)


def test_self_drafting_accepts_long_paths_and_is_token_identical_to_ar(engine, bench_prompts, ar_outputs):
    engine.scheduler.max_batch = 4
    half = len(bench_prompts) // 2  # the target drafting for itself costs a target forward per tree level
    outs = engine.generate(bench_prompts[:half], SamplingParams(max_new_tokens=NEW_TOKENS), SPECS["tree"], chat=True)
    assert [o.token_ids for o in outs] == ar_outputs[:half]
    assert sum(o.stats.accepted for o in outs) > 2 * sum(o.stats.target_forwards for o in outs)


def test_stop_string_cuts_the_text(engine):
    (out,) = engine.generate(["List the days of the week, one per line."],
                             SamplingParams(max_new_tokens=40, stop=("Wednesday",)), SPECS["chain"], chat=True)
    assert out.finish_reason == "stop" and "Wednesday" not in out.text and "Tuesday" in out.text


def test_drafter_with_another_tokenizer_is_refused(tmp_path):
    folder = tmp_path / "other-tokenizer"
    tok = AutoTokenizer.from_pretrained(ensure_default_model())
    tok.add_tokens(["<not-in-the-target>"])
    tok.save_pretrained(folder)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192)
                     ).save_pretrained(folder)
    with pytest.raises(InvalidRequestError) as err:
        build_engine(EngineConfig(drafter=str(folder)))
    assert err.value.field == "drafter" and "tokenizer" in str(err.value)


@pytest.mark.parametrize(
    "config, field",
    [
        (EngineConfig(target="/no/such/folder"), "target"),
        (EngineConfig(drafter="/no/such/drafter"), "drafter"),
        (EngineConfig(dtype="float8"), "dtype"),
        (EngineConfig(device="tpu"), "device"),
        (EngineConfig(max_batch=0), "max_batch"),
    ],
)
def test_bad_engine_config_names_the_field(config, field):
    with pytest.raises(InvalidRequestError) as err:
        build_engine(config)
    assert err.value.field == field
