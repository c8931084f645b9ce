"""The ngram corpus (orchestration/ngram_corpus.py): lookups against a brute-force scan, ranked by frequency and
never across two texts; `ngram` and ngram branches with a corpus: greedy identical to `ar`, more accepted tokens,
the sampling law; corpus files, `write-ngram-corpus` and engine.ngram_corpus's errors."""

import dataclasses
import json
import random
from collections import Counter

import pytest

from helpers import noisy_copy, tiny_engine, tiny_model
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.ngram_corpus import SAMPLE, CorpusIndex, read_texts
from mirrorspec.params import SamplingParams, SpecParams

VOCAB = 64
NGRAM = SpecParams(method="ngram", tree_depth=4, tree_topk=2, tree_nodes=7)


def scan(texts: list[list[int]], context: list[int], length: int) -> list[list[int]]:
    """Every continuation of the longest suffix of `context` (2 to 4 tokens) that occurs in `texts`."""
    for n in range(min(4, len(context)), 1, -1):
        found = [t[i + n:i + n + length] for t in texts for i in range(len(t) - n) if t[i:i + n] == context[-n:]]
        if found:
            return found
    return []


def test_lookups_equal_a_brute_force_scan_and_rank_the_most_frequent_first():
    rng = random.Random(0)
    texts = [[rng.randrange(6) for _ in range(rng.randint(1, 30))] for _ in range(40)]  # few symbols: repeats
    corpus = CorpusIndex(texts)
    assert len(corpus) == sum(map(len, texts))
    for _ in range(200):
        context = [rng.randrange(6) for _ in range(rng.randint(1, 6))]
        found = corpus.continuations(context, 3)
        assert sorted(found) == sorted(scan(texts, context, 3))
        if found:  # the first continuation starts with the most frequent first token
            firsts = Counter(c[0] for c in found)
            assert firsts[found[0][0]] == max(firsts.values())


def test_no_continuation_crosses_from_one_text_into_the_next():
    corpus = CorpusIndex([[1, 2, 3], [4, 5, 6, 7]])
    assert corpus.continuations([9, 2, 3], 4) == []  # (2, 3) ends its text
    assert corpus.continuations([3, 4], 4) == []  # (3, 4) spans two texts
    assert corpus.continuations([4, 5], 4) == [[6, 7]]
    assert CorpusIndex([]).continuations([4, 5], 4) == [] and len(CorpusIndex([[], [3]])) == 1


def test_corpus_drafts_are_trees_of_its_continuations_with_discounted_estimates():
    """Frequencies in other texts overstate acceptance: the corpus tree's log-probabilities are the plain
    continuation tree's times CONFIDENCE_EXPONENT; its nodes are deterministic."""
    from mirrorspec.orchestration.ngram_corpus import CONFIDENCE_EXPONENT
    from mirrorspec.orchestration.ngram_draft import continuation_tree

    corpus = CorpusIndex([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [0, 2, 3, 6, 7]])
    tree = corpus.draft([9, 1, 2, 3], depth=2, topk=2, budget=8)
    plain = continuation_tree(corpus.continuations([9, 1, 2, 3], 2), 2, 2, 8)
    assert (tree.tokens, tree.parents) == (plain.tokens, plain.parents) == ([4, 5], [-1, -1])  # (1, 2, 3) matched
    assert tree.logprobs == pytest.approx([CONFIDENCE_EXPONENT * lp for lp in plain.logprobs])
    assert all(q is None for q in tree.proposals)


def test_a_frequent_ngram_samples_its_occurrences():
    corpus = CorpusIndex([[1, 2] * 200])
    assert len(corpus.continuations([1, 2], 2)) == SAMPLE


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", VOCAB, seed=3, sharpness=4.0)


def plain_prompts(count: int) -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(5, VOCAB) for _ in range(8)] for _ in range(count)]


def test_ngram_with_a_corpus_equals_ar_and_accepts_more(target):
    """A corpus of the target's answers to other prompts that share the prompts' last tokens: `ngram` copies from
    it where the prompt alone offers nothing to copy."""
    prompts = plain_prompts(6)
    sampling = SamplingParams(max_new_tokens=20, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None, max_batch=6).generate(prompts, sampling)]
    others = [[9, 9] + p[-4:] for p in prompts]  # other prompts, same last four tokens: the same answers follow
    answers = [p[-4:] + o.token_ids for p, o in zip(others, tiny_engine(target, None, max_batch=6).generate(
        others, sampling))]
    accepted = {}
    for corpus, use in ((None, True), (CorpusIndex(answers), True), (CorpusIndex(answers), False),
                        (CorpusIndex(answers), None)):
        spec = dataclasses.replace(NGRAM, use_corpus=use)
        outs = tiny_engine(target, None, max_batch=6, ngram_corpus=corpus).generate(prompts, sampling, spec)
        assert [o.token_ids for o in outs] == ar
        accepted[corpus is not None, use] = sum(o.stats.accepted for o in outs)
    assert accepted[True, True] > accepted[False, True] + 2 * len(prompts)
    assert accepted[True, False] == accepted[False, True]  # use_corpus=False: the request's own text only
    assert accepted[True, None] == accepted[True, True]  # unset: `ngram` copies from the corpus


def test_ngram_branches_with_a_corpus_keep_greedy_output_equal_to_ar(target):
    prompts = plain_prompts(4)
    sampling = SamplingParams(max_new_tokens=16, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None, max_batch=4).generate(prompts, sampling)]
    corpus = CorpusIndex([p + a for p, a in zip(prompts, ar)])
    accepted = {}
    for use in (True, False, None):
        spec = SpecParams(method="chain", gamma=4, use_corpus=use)
        outs = tiny_engine(target, noisy_copy(target, 6.0, seed=3), max_batch=4, ngram_corpus=corpus).generate(
            prompts, sampling, spec)
        assert [o.token_ids for o in outs] == ar
        accepted[use] = sum(o.stats.accepted for o in outs)
    assert accepted[True] > accepted[False] + 2 * len(prompts)  # a very noisy drafter: the corpus's doing
    assert accepted[None] == accepted[False]  # unset: a model draft's branches copy from the text itself only


def test_the_sampling_law_holds_with_a_corpus():
    """tests/test_sampling_law.py's check on `ngram` drafts that come from a corpus of random text."""
    from test_sampling_law import EOS, SETTINGS, accepted_at_depth, exact_ar_law, excess, sampled_law

    target = tiny_model("llama", 4, seed=11, sharpness=6.0)
    rng = random.Random(1)
    corpus = CorpusIndex([[rng.randrange(4) for _ in range(12)] for _ in range(30)])
    engine = tiny_engine(target, None, max_batch=256, max_model_len=24, max_spec_nodes=16, eos_ids=[EOS],
                         ngram_corpus=corpus)
    settings = SETTINGS["T=1,top_p=0.8"]
    seen, outs = sampled_law(target, None, NGRAM, settings, generate=engine.generate)
    assert excess(seen, exact_ar_law(target, SamplingParams(**settings))) <= 0.0
    assert accepted_at_depth(outs, 2) > 0


def test_use_corpus_is_a_per_request_switch_on_every_interface():
    from mirrorspec.protos import generation_pb2 as pb
    from mirrorspec.serving.tgis_wire import _speculation

    with pytest.raises(InvalidRequestError, match="use_corpus"):
        SpecParams(method="ngram", use_corpus="no").validate(64)
    off = _speculation(pb.SpeculationParameters(method=pb.NGRAM, no_corpus=True), SpecParams(), ("ngram",))
    assert off == {"method": "ngram", "use_corpus": False}


def test_corpus_files_are_checked_by_name(tmp_path):
    from mirrorspec.orchestration.engine import EngineConfig
    from mirrorspec.orchestration.factory import build_ngram_corpus

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"words": "no text key"}\n')
    with pytest.raises(InvalidRequestError, match="ngram_corpus.*bad.jsonl:2"):
        read_texts(bad)
    with pytest.raises(InvalidRequestError, match="ngram_corpus"):
        build_ngram_corpus(EngineConfig(ngram_corpus=str(tmp_path / "missing.jsonl")), tokenizer=None)
    with pytest.raises(InvalidRequestError, match="ngram_corpus"):
        EngineConfig(ngram_corpus=3).validate()
    # The shipped corpus holds the default target's answers: another target gets none.
    assert build_ngram_corpus(EngineConfig(target=str(tmp_path)), tokenizer=None) is None
    assert build_ngram_corpus(EngineConfig(ngram_corpus=None), tokenizer=None) is None


def test_write_ngram_corpus_round_trips_the_targets_answers(tmp_path):
    """Answers (token ids in a train-drafter data folder) -> text file -> the same ids when the engine loads it."""
    from mirrorspec.cli.main import main
    from mirrorspec.orchestration.ngram_corpus import load_corpus
    from mirrorspec.workers.models import load_tokenizer, resolve_model_dir

    tokenizer = load_tokenizer(resolve_model_dir("default", field="target"))
    texts = ["Here is a Python function:\n\ndef add(a, b):\n    return a + b", "The capital of France is Paris."]
    answers = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    data = tmp_path / "data"
    data.mkdir()
    (data / "responses.jsonl").write_text("".join(json.dumps({"category": "x", "prompt_ids": [1], "answer_ids": a})
                                                  + "\n" for a in answers))
    out = tmp_path / "corpus.jsonl.gz"
    assert main(["write-ngram-corpus", "--data", str(data), "--out", str(out)]) == 0
    assert read_texts(out) == texts
    corpus = load_corpus(str(out), tokenizer)
    assert corpus.tokens.tolist() == [-1] * 4 + [t for a in answers for t in a + [-1]]
    assert main(["write-ngram-corpus", "--data", str(tmp_path / "none"), "--out", str(out)]) == 2
