"""`ngram`: model-free drafts from the text itself. The index and its trees exactly; greedy output identical to
`ar` at batch 1 and 4, mixed with model-drafted rows; the sampling law (6000 seeded samples against ar's law).
The same drafts as branches merged into a drafter model's tree (SpecParams.ngram_branches): the merge exactly,
greedy identity; the law of merged trees is tests/test_sampling_law.py's `tree` case (branches on by default)."""

import pytest

from helpers import noisy_copy, tiny_engine, tiny_model
from mirrorspec.orchestration.draft_tree import ROOT, DraftTree, merge
from mirrorspec.orchestration.interfaces import OpenSpec, Report
from mirrorspec.orchestration.ngram_draft import NgramDraftService, NgramIndex
from mirrorspec.params import SamplingParams, SpecParams

VOCAB = 64
NGRAM = SpecParams(method="ngram", tree_depth=4, tree_topk=2, tree_nodes=7)


def index_of(tokens: list[int]) -> NgramIndex:
    index = NgramIndex()
    index.extend(tokens[:3])  # online, in pieces, as reports arrive
    index.extend(tokens[3:])
    return index


def test_the_longest_suffix_and_the_newest_occurrence_come_first():
    index = index_of([1, 2, 3, 4, 9, 8, 1, 2, 3, 5, 7, 6, 2, 3, 6, 1, 2, 3])
    # (1, 2, 3) occurred twice (followed by 4 9 and by 5 7); (2, 3) also once more (followed by 6 1)
    assert index.continuations(2) == [[5, 7], [4, 9], [6, 1], [5, 7], [4, 9]]
    tree = index.draft(depth=3, topk=2, budget=6)
    assert tree.tokens == [5, 7, 6, 4, 9, 8]  # two children of the root; each branch as deep as allowed
    assert tree.parents == [-1, 0, 1, -1, 3, 4]
    assert all(p is None for p in tree.proposals)  # deterministic nodes
    chain = index.draft(depth=3, topk=1, budget=3)
    assert (chain.tokens, chain.parents) == ([5, 7, 6], [-1, 0, 1])
    assert len(index.draft(depth=4, topk=2, budget=3)) == 3


def test_no_repeat_drafts_nothing():
    assert len(index_of([1, 2, 3, 4, 5, 6]).draft(depth=4, topk=2, budget=8)) == 0
    assert len(index_of([7, 1, 2, 7, 3]).draft(depth=4, topk=2, budget=8)) == 0  # a one-token match is too short


def test_the_service_follows_each_sequence_and_forgets_it():
    service = NgramDraftService()
    service.open([OpenSpec(1, 0, SamplingParams()), OpenSpec(2, 0, SamplingParams())])
    first = service.propose([Report(1, [4, 5, 6, 4, 5], depth=2, topk=1, budget=2), Report(2, [4, 5], depth=2,
                                                                                           topk=1, budget=2)])
    assert first[1].tree.tokens == [6, 4] and first[2].tree.tokens == []
    assert service.propose([Report(2, [6, 4, 5], depth=2, topk=1, budget=2)])[2].tree.tokens == [6, 4]
    service.release([1])
    with pytest.raises(KeyError):
        service.propose([Report(1, [6], depth=2, topk=1, budget=2)])


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", VOCAB, seed=3, sharpness=4.0)


def repetitive_prompts(count: int) -> list[list[int]]:
    """Prompts that repeat a phrase, as text that quotes itself does."""
    return [[(7 * p + k) % 50 + 5 for k in range(6)] * 3 + [9, (7 * p) % 50 + 5, (7 * p + 1) % 50 + 5]
            for p in range(count)]


@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_output_equals_ar(target, batch):
    prompts = repetitive_prompts(6)
    sampling = SamplingParams(max_new_tokens=24, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None, max_batch=1).generate(prompts, sampling)]
    outs = tiny_engine(target, None, max_batch=batch).generate(prompts, sampling, NGRAM)
    assert [o.token_ids for o in outs] == ar
    assert sum(o.stats.accepted for o in outs) > len(prompts)  # drafts were taken, beyond a token each


def test_ngram_rows_and_model_drafted_rows_share_a_batch(target):
    engine = tiny_engine(target, noisy_copy(target, 0.4, seed=2), max_batch=6)
    prompts = repetitive_prompts(6)
    sampling = SamplingParams(max_new_tokens=16, ignore_eos=True)
    ar = [o.token_ids for o in engine.generate(prompts, sampling)]
    specs = [NGRAM, SpecParams(method="chain", gamma=3)] * 3
    ids = [engine.add_request(p, sampling, s) for p, s in zip(prompts, specs)]
    done = {}
    while engine.has_unfinished():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert [done[i].token_ids for i in ids] == ar
    for method in ("ngram", "chain"):  # both kinds of rows took drafts
        assert sum(done[i].stats.accepted for i, s in zip(ids, specs) if s.method == method) > 0


def test_the_sampling_law_holds():
    """tests/test_sampling_law.py's check on `ngram` drafts (deterministic trees of up to two children)."""
    from test_sampling_law import SETTINGS, accepted_at_depth, exact_ar_law, excess, sampled_law

    target = tiny_model("llama", 4, seed=11, sharpness=6.0)
    settings = SETTINGS["T=1,top_p=0.8"]
    seen, outs = sampled_law(target, None, NGRAM, settings)
    assert excess(seen, exact_ar_law(target, SamplingParams(**settings))) <= 0.0
    assert accepted_at_depth(outs, 2) > 0


def test_merged_branches_keep_the_drafters_nodes_first_and_share_prefixes():
    base = DraftTree(tokens=[5, 6, 7], parents=[ROOT, 0, ROOT], proposals=[None] * 3, logprobs=[-0.1, -0.2, -2.0])
    extra = DraftTree(tokens=[5, 8, 9, 4], parents=[ROOT, 0, 1, ROOT], proposals=[None] * 4,
                      logprobs=[-0.4, -0.4, -0.4, -1.1])
    merged = merge(base, extra, max_nodes=16)
    assert merged.tokens[:3] == base.tokens and merged.parents[:3] == base.parents
    assert list(zip(merged.tokens[3:], merged.parents[3:])) == [(8, 0), (9, 3), (4, ROOT)]  # 5 is shared
    assert merge(base, extra, max_nodes=4).tokens == [5, 6, 7, 8]  # capped; 9's parent stays, 4 is left out


def test_ngram_branches_keep_greedy_output_equal_to_ar_and_add_accepted_tokens(target):
    """A drafter that is almost always wrong (a very noisy copy) next to a target that repeats its prompt: the
    copied branches are what gets accepted."""
    prompts = repetitive_prompts(4)
    sampling = SamplingParams(max_new_tokens=24, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None, max_batch=4).generate(prompts, sampling)]
    drafter = noisy_copy(target, 6.0, seed=3)
    accepted = {}
    for branches in (False, True):
        spec = SpecParams(method="chain", gamma=4, ngram_branches=branches)
        outs = tiny_engine(target, drafter, max_batch=4).generate(prompts, sampling, spec)
        assert [o.token_ids for o in outs] == ar
        accepted[branches] = sum(o.stats.accepted for o in outs)
    assert accepted[True] > accepted[False] + len(prompts)

