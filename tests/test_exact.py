"""The exact target path (`engine.exact`): a token's logits are the same bits decoded alone, verified in a chain or
a token tree, or computed next to other sequences in a batch, in float32 and bfloat16 (torch.equal, never
allclose); and so every method's greedy output equals `ar` token for token at half precision too."""

import dataclasses

import pytest
import torch

from helpers import noisy_copy, tiny_engine, tiny_model
from mirrorspec.bench.exactness import Probe, decoded, same_bits, verified_in_chains
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.diffusion_draft import DiffusionDraftService
from mirrorspec.orchestration.engine import Engine, EngineConfig
from mirrorspec.orchestration.factory import build_target
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers import exact_attention, exact_attention_kernel, exact_linear
from mirrorspec.workers.diffusion_model import DiffusionLM, DllmMeta
from mirrorspec.workers.model_worker import ModelWorker
from mirrorspec.workers.models import has_native_bf16, parse_dtype

VOCAB = 96
# Prompts of three lengths (one of two tokens: a one-token prefill), prefilled alone or together.
PROMPTS = [[5, 9, 14, 3, 22, 7], [7, 20], [60, 2, 33, 19, 8, 8, 90, 11, 4]]
PROBE = Probe(PROMPTS, [[11, 40, 2, 17, 63, 5, 30, 12, 9], [33, 8, 70, 1, 2, 3, 55, 21, 6],
                        [19, 19, 4, 88, 3, 50, 7, 7, 2]], VOCAB)


def cast(loaded, dtype):
    loaded.model.to(dtype)
    return loaded


def exact_worker(loaded) -> ModelWorker:
    return ModelWorker(loaded, max_slots=4, capacity=96, max_spec_nodes=16, exact=True)


@pytest.fixture(params=["C kernel", "PyTorch form"])
def attention_form(request, monkeypatch):
    """The step attention as compiled (where a C compiler is) and in its PyTorch form (elsewhere, and on GPUs)."""
    if request.param == "C kernel":
        assert exact_attention_kernel.load() is not None, "cc did not build the kernel"
    else:
        monkeypatch.setattr(exact_attention_kernel, "load", lambda: None)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral", "gemma2"])
def test_decode_chain_tree_and_batch_give_the_same_bits(family, dtype, attention_form):
    checks = same_bits(exact_worker(cast(tiny_model(family, VOCAB, seed=4, sharpness=4.0), dtype)), PROBE)
    assert all(checks.values()), checks


@pytest.mark.parametrize("dim", [32, 40, 64, 80, 128])
@pytest.mark.parametrize("mask", ["causal", "random"])
@pytest.mark.parametrize("group", [3, 6])
def test_the_kernel_attends_as_softmax_does(dim, mask, group):
    """The kernel's own exp and order of sums agree with PyTorch's attention to float32 rounding, for head sizes
    below, at and past its 64-column vectors (40: past its 16x16 transposed tiles too), prefixes longer than its
    64-key vectors (read in place) and tree-like masks (gathered), a padding query (no visible key: zeros), and
    query heads per key head within and past the heads it sums at once (6: four, then two)."""
    generator = torch.Generator().manual_seed(dim)
    keys = 150
    query = torch.randn(2, 2 * group, 5, dim, generator=generator)
    key, value = (torch.randn(2, 2, keys, dim, generator=generator) for _ in range(2))
    if mask == "causal":
        allowed = (torch.arange(keys) <= torch.arange(keys - 5, keys)[:, None]).expand(2, 5, keys).clone()
    else:
        allowed = torch.rand(2, 5, keys, generator=generator) < 0.6
    allowed[1, 3] = False
    for softcap in (None, 20.0):
        got = exact_attention_kernel.load()(query, key, value, allowed, dim ** -0.5, softcap)
        scores = query @ key.repeat_interleave(group, dim=1).transpose(-1, -2) * dim ** -0.5
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        weights = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), -1).nan_to_num(0.0)
        want = (weights @ value.repeat_interleave(group, dim=1)).transpose(1, 2)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(got[1, 3], torch.zeros(2 * group, dim))


@pytest.mark.parametrize("dim", [64, 80])
@pytest.mark.parametrize("heads", [6, 10])
def test_the_kernel_gives_a_query_the_same_bits_alone_in_a_chain_and_as_a_tree_node(dim, heads):
    """Bitwise, on the kernel's vector paths (64-key blocks, 16-key tails, gathered tree keys): each of 5 chained
    queries after 145 keys equals that query attended alone, and attended with its keys scattered among others'
    (a tree node's columns), next to another batch row."""
    generator = torch.Generator().manual_seed(7)
    attend = exact_attention_kernel.load()
    query = torch.randn(1, heads, 5, dim, generator=generator)
    key, value = (torch.randn(1, 2, 150, dim, generator=generator) for _ in range(2))
    chain = attend(query, key, value, torch.arange(150) <= torch.arange(145, 150)[:, None][None], 0.1, None)
    for t in range(5):
        visible = 146 + t
        alone = attend(query[:, :, t:t + 1], key[:, :, :visible], value[:, :, :visible],
                       torch.ones(1, 1, visible, dtype=torch.bool), 0.1, None)
        assert torch.equal(alone[:, 0], chain[:, t])
        # The same keys at every other column of a wider cache, another row beside it.
        spread = torch.randn(2, 2, 2 * visible, dim, generator=generator)
        spread_value = torch.randn(2, 2, 2 * visible, dim, generator=generator)
        spread[0, :, ::2], spread_value[0, :, ::2] = key[0, :, :visible], value[0, :, :visible]
        allowed = torch.zeros(2, 1, 2 * visible, dtype=torch.bool)
        allowed[0, 0, ::2] = True
        allowed[1, 0, : visible // 2] = True
        queries = torch.cat([query[:, :, t:t + 1], torch.randn(1, heads, 1, dim, generator=generator)])
        tree = attend(queries, spread, spread_value, allowed, 0.1, None)
        assert torch.equal(tree[0, 0], chain[0, t])


@pytest.mark.parametrize("threads", [2, 3])
def test_the_kernel_gives_the_same_bits_on_any_number_of_threads(threads):
    """Its queries are split among threads (each transposing the keys its share needs): a tree-masked batch of
    two rows, three key heads, gives the bits it gives on one thread."""
    generator = torch.Generator().manual_seed(11)
    attend = exact_attention_kernel.load()
    query = torch.randn(2, 6, 7, 64, generator=generator)
    key, value = (torch.randn(2, 3, 100, 64, generator=generator).bfloat16() for _ in range(2))
    allowed = torch.rand(2, 7, 100, generator=generator) < 0.6
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = attend(query, key, value, allowed, 0.125, None)
        torch.set_num_threads(threads)
        assert torch.equal(attend(query, key, value, allowed, 0.125, None), alone)
    finally:
        torch.set_num_threads(before)


def test_the_kernel_reads_a_cache_in_place_or_copies_keys_and_values_alike():
    """bf16 views read in place, and a value view it cannot read in place beside an in-place key view: both are
    then read as float32 copies (the kernel takes one dtype for both), the same bits either way."""
    generator = torch.Generator().manual_seed(3)
    attend = exact_attention_kernel.load()
    query = torch.randn(1, 6, 3, 64, generator=generator)
    key, value = (torch.randn(1, 2, 90, 64, generator=generator).bfloat16() for _ in range(2))
    allowed = torch.arange(90) <= torch.arange(87, 90)[:, None][None]
    in_place = attend(query, key, value, allowed, 0.125, None)
    strided = value.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, columns-first in memory
    assert torch.equal(attend(query, key, strided, allowed, 0.125, None), in_place)
    assert torch.equal(attend(query, key.float(), value.float(), allowed, 0.125, None), in_place)


def test_the_kernel_refuses_shapes_it_cannot_read():
    query, key = torch.zeros(1, 6, 2, 64), torch.zeros(1, 2, 10, 64)
    with pytest.raises(ValueError, match="do not fit"):
        exact_attention_kernel.load()(query, key, key, torch.ones(1, 2, 9, dtype=torch.bool), 0.125, None)


def test_without_a_compiler_the_pytorch_form_is_used(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("MIRRORSPEC_CACHE", str(tmp_path))
    exact_attention_kernel.load.cache_clear()
    try:
        assert exact_attention_kernel.load() is None
        assert "using the PyTorch form" in caplog.text
    finally:
        exact_attention_kernel.load.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_elementwise_attention_products_give_the_same_bits(monkeypatch, dtype):
    """The PyTorch form's fallback where a BLAS's batched product is not batch-invariant."""
    monkeypatch.setattr(exact_attention_kernel, "load", lambda: None)
    monkeypatch.setattr(exact_attention, "_batched_is_invariant", lambda *shape: False)
    checks = same_bits(exact_worker(cast(tiny_model("llama", VOCAB, seed=4, sharpness=4.0), dtype)), PROBE)
    assert all(checks.values()), checks


@dataclasses.dataclass(frozen=True)
class SplitSum(exact_linear.TileKernel):
    """A kernel (of `multiple` and `chunk` for the check's counts only: it computes every row alone, whatever this
    machine's BLAS does) whose products of `counts[0]` to `counts[1]` rows sum the rows from `first_row` on in
    another order (two partial sums over the inner dimension), as a BLAS that switches its blocking for some
    shapes does (oneDNN's AMX bf16 products, from 33 rows on)."""

    counts: tuple[int, int] = (0, 0)
    first_row: int = 0

    def __call__(self, x, weight, bias):
        out = torch.cat([torch.nn.functional.linear(row[None], weight) for row in x])
        if not self.counts[0] <= x.shape[0] <= self.counts[1]:
            return out
        cut, tail = weight.shape[1] // 3, x[self.first_row:].float()
        split = tail[:, :cut] @ weight[:, :cut].float().T + tail[:, cut:] @ weight[:, cut:].float().T
        return torch.cat([out[:self.first_row], split.to(out.dtype)])


def row_invariant(kernel, weight) -> bool:
    return exact_linear.is_row_invariant(kernel, *exact_linear.cancelling_operands(weight, exact_linear.LONG_ROWS),
                                         None)


@pytest.mark.parametrize("rows", [(21, 40), (44, 48), (65, 68)])
def test_the_linear_check_covers_a_step_kernels_whole_chunk(rows):
    """A 64-row chunk is checked at every row count up to it and a tile past it (a check of 1-17 rows and a
    300-row product passed these kernels); outside the checked counts the same kernel is kept."""
    weight = torch.randn(32, 48)
    kernel = SplitSum("4-row multiples", 4, exact_linear.STEP_CHUNK, False, counts=rows)
    assert not row_invariant(kernel, weight)
    beyond = exact_linear.checked_rows(kernel) + 1
    assert row_invariant(dataclasses.replace(kernel, counts=(beyond, beyond + 10)), weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_linear_check_compares_every_row_of_a_long_product(dtype):
    """A kernel that sums rows past the 17th otherwise in products of 33 rows or more is refused, in bf16 too
    (rounded to bf16, most such differences vanish for random operands: the check's cancel), and `choose` moves
    on to the next candidate. The check compared the first 17 rows of long products, and passed it."""
    weight = torch.randn(40, 60).to(dtype)
    kernel = SplitSum("native", 0, 0, False, counts=(33, exact_linear.LONG_ROWS), first_row=20)
    assert not row_invariant(kernel, weight)
    assert exact_linear.choose((kernel, exact_linear.STEP_KERNELS[torch.float32][-1]), weight, None).name == "one row"
    assert row_invariant(dataclasses.replace(kernel, counts=(0, 0)), weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_linear_kernel_gives_a_strided_input_the_bits_of_a_contiguous_one(dtype):
    """The check multiplies contiguous rows; a row given in another layout (a transposed view) is multiplied as
    that copy would be (fed a transposed product's output, a BLAS here took another path and the next layer's
    rows changed)."""
    weight = torch.randn(96, 64).to(dtype)
    strided = torch.randn(64, 6).to(dtype).t()
    for kernel in {*exact_linear.STEP_KERNELS[torch.float32], *exact_linear.STEP_KERNELS["half"]}:
        assert torch.equal(kernel(strided, weight, None), kernel(strided.contiguous(), weight, None)), kernel.name


def test_the_checks_fail_on_the_stock_kernels():
    """Negative control: the same checks on the fast path (SDPA, the BLAS's own row blocking) find differences."""
    failed = [(family, dtype) for family in ("llama", "gemma2") for dtype in (torch.float32, torch.bfloat16)
              if not all(same_bits(ModelWorker(cast(tiny_model(family, VOCAB, seed=4, sharpness=4.0), dtype),
                                               max_slots=4, capacity=96, max_spec_nodes=16), PROBE).values())]
    assert len(failed) >= 2, failed


@pytest.mark.real_model
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_real_model_gives_the_same_bits(dtype):
    """On 2 threads, then on 1 with the same worker: a BLAS blocks otherwise on another thread count (MKL's fp32
    576x576 products of 4-row multiples keep a row's bits on 2 threads, not on 1, on an AMX Xeon), so kernels
    chosen on one count (a prefill's included) are chosen again on the other."""
    before, checks = torch.get_num_threads(), {}
    try:
        torch.set_num_threads(2)
        worker, _ = build_target(EngineConfig(dtype=dtype, max_batch=4, exact=True))
        for threads in (2, 1):
            torch.set_num_threads(threads)
            checks[threads] = same_bits(worker, PROBE)
    finally:
        torch.set_num_threads(before)
    assert all(all(c.values()) for c in checks.values()), checks


@pytest.mark.real_model
def test_the_real_model_gives_the_same_bits_in_a_long_verify():
    """48 tokens verified 40 at a time equal them decoded one at a time: with AMX, oneDNN's bf16 products of 33
    rows or more round every row otherwise, and a check that compared random operands' first 17 rows kept them
    (a batch of two 24-node trees is 48 rows)."""
    worker, _ = build_target(EngineConfig(max_batch=1, exact=True))
    continuation = torch.randint(100, 20000, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    probe = Probe([[1, 504, 3000, 77, 9123, 42, 12]], [continuation], worker.vocab_size)
    assert torch.equal(verified_in_chains(worker, probe, 0, 40), decoded(worker, probe, [0])[0])


SPECS = [SpecParams(method="chain", gamma=4), SpecParams(method="tree", tree_depth=4, tree_topk=3, tree_nodes=10),
         SpecParams(method="mirror", gamma=3), SpecParams(method="diffusion-draft", tree_depth=4, tree_topk=2,
                                                          tree_nodes=8)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.method)
def test_every_method_equals_ar_in_bfloat16(spec):
    target = cast(tiny_model("llama", VOCAB, seed=1, sharpness=4.0), torch.bfloat16)
    noisy = noisy_copy(target, 0.4, seed=2)
    sampling = SamplingParams(max_new_tokens=20, ignore_eos=True)

    def drafter(batch: int):
        if spec.method == "diffusion-draft":  # the noisy copy read as a block-diffusion drafter (causally)
            meta = DllmMeta(mask_token_id=VOCAB - 1, shifted=True, draft_window=5)
            return DiffusionDraftService(DiffusionLM(noisy.model, meta, own=True))
        return ModelWorker(noisy, max_slots=batch, capacity=160, max_spec_nodes=16)

    def engine(batch: int, with_drafter: bool = True) -> Engine:
        return Engine(ModelWorker(target, max_slots=batch, capacity=160, max_spec_nodes=16, exact=True),
                      drafter(batch) if with_drafter else None, max_model_len=128, max_batch=batch, max_spec_nodes=16)

    prompts = PROMPTS * 3
    ar = [o.token_ids for o in engine(1, with_drafter=False).generate(prompts, sampling)]
    for batch in (1, 8):
        outs = engine(batch).generate(prompts, sampling, spec)
        assert [o.token_ids for o in outs] == ar, batch
        assert sum(o.stats.accepted for o in outs) > 0


def test_the_sampling_law_holds_in_bfloat16():
    """tests/test_sampling_law.py's check (every position and adjacent pair of 6000 seeded samples against ar's
    exact law), on a bf16 target on the exact path."""
    from test_sampling_law import EOS, SETTINGS, accepted_at_depth, exact_ar_law, excess, sampled_law

    target = cast(tiny_model("llama", 4, seed=11, sharpness=6.0), torch.bfloat16)
    drafter = noisy_copy(target, 0.3, seed=5)
    settings = SETTINGS["T=0.6"]
    law = exact_ar_law(target, SamplingParams(**settings))  # before the engine's worker switches the kernels
    engine = tiny_engine(target, drafter, max_batch=256, max_model_len=24, max_spec_nodes=16, eos_ids=[EOS],
                         exact=True)
    seen, outs = sampled_law(target, drafter, SpecParams(method="chain", gamma=4), settings, generate=engine.generate)
    assert excess(seen, law) <= 0.0
    assert accepted_at_depth(outs, 3) > 0


def test_dtype_auto_takes_bfloat16_only_where_it_is_native():
    native = has_native_bf16(torch.device("cpu"))
    assert parse_dtype("auto") == (torch.bfloat16 if native else torch.float32)
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):  # no AVX-512 at all: bf16 is emulated
        assert not native
    with pytest.raises(InvalidRequestError, match="dtype: unknown dtype 'half'; choose auto or one of"):
        parse_dtype("half")


def test_a_long_append_with_a_draft_in_one_forward_is_computed_whole():
    """Not an engine path (prefills draft nothing), but the worker takes it: the appended tokens and the nodes
    after them all get attention (computed by the step kernels), the same math as appending first."""
    worker = exact_worker(tiny_model("llama", VOCAB, seed=4, sharpness=4.0))
    prompt, draft = PROMPTS[2], [11, 40, 2]
    worker.open(0)
    together = worker.forward([0], [prompt], [draft], [[-1, 0, 1]])[0]
    worker.release(0)
    worker.open(0)
    worker.forward([0], [prompt[:-1]])
    apart = worker.forward([0], [prompt[-1:]], [draft], [[-1, 0, 1]])[0]
    worker.release(0)
    assert together.shape == apart.shape == (4, VOCAB)
    assert torch.allclose(together, apart, atol=1e-4)
