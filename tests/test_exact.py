"""The exact target path (`engine.exact`): a token's logits are the same bits decoded alone, verified in a chain or
a token tree, or computed next to other sequences in a batch, in float32 and bfloat16 (torch.equal, never
allclose); and so every method's greedy output equals `ar` token for token at half precision too."""

import pytest
import torch

from helpers import noisy_copy, tiny_model
from mirrorspec.orchestration.engine import Engine, EngineConfig
from mirrorspec.orchestration.factory import build_target
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers.model_worker import ModelWorker

VOCAB = 96
PROMPTS = [[5, 9, 14, 3, 22, 7], [7, 7, 20, 41], [60, 2, 33, 19, 8, 8, 90, 11, 4]]
CONTINUATIONS = [[11, 40, 2, 17, 63, 5, 30, 12, 9], [33, 8, 70, 1, 2, 3, 55, 21, 6], [19, 19, 4, 88, 3, 50, 7, 7, 2]]


def cast(loaded, dtype):
    loaded.model.to(dtype)
    return loaded


def exact_worker(loaded) -> ModelWorker:
    return ModelWorker(loaded, max_slots=4, capacity=96, max_spec_nodes=16, exact=True)


def prefilled(worker, seq: int) -> None:
    worker.open(seq)
    worker.forward([seq], [PROMPTS[seq][:-1]])


def decoded(worker, seqs: list[int]) -> dict[int, torch.Tensor]:
    """Each sequence's logits after each fed token, the sequences decoded together one token per step."""
    for seq in seqs:
        prefilled(worker, seq)
    feeds = {s: [PROMPTS[s][-1]] + CONTINUATIONS[s] for s in seqs}
    rows = {s: [] for s in seqs}
    for step in range(len(feeds[seqs[0]])):
        for seq, logits in zip(seqs, worker.forward(seqs, [[feeds[s][step]] for s in seqs])):
            rows[seq].append(logits[0])
    for seq in seqs:
        worker.release(seq)
    return {s: torch.stack(v) for s, v in rows.items()}


def verified_in_chains(worker, seq: int, k: int) -> torch.Tensor:
    prefilled(worker, seq)
    feed = [PROMPTS[seq][-1]] + CONTINUATIONS[seq]
    rows = []
    for start in range(0, len(feed), k):
        block = feed[start:start + k]
        rows += worker.forward([seq], [block[:1]], [block[1:]], [list(range(-1, len(block) - 2))])[0]
        worker.commit({seq: list(range(len(block) - 1))})
    worker.release(seq)
    return torch.stack(rows)


def verified_in_a_tree(worker, seq: int) -> torch.Tensor:
    """The continuation's first 4 tokens as a tree path; at each level two wrong siblings come first."""
    prefilled(worker, seq)
    nodes, parents, path, parent = [], [], [], -1
    for token in CONTINUATIONS[seq][:4]:
        for wrong in ((token + 1) % VOCAB, (token + 2) % VOCAB):
            nodes.append(wrong)
            parents.append(parent)
        nodes.append(token)
        parents.append(parent)
        parent = len(nodes) - 1
        path.append(parent)
    logits = worker.forward([seq], [[PROMPTS[seq][-1]]], [nodes], [parents])[0]
    worker.release(seq)
    return logits[[0] + [1 + node for node in path]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral", "gemma2"])
def test_decode_chain_tree_and_batch_give_the_same_bits(family, dtype):
    worker = exact_worker(cast(tiny_model(family, VOCAB, seed=4, sharpness=4.0), dtype))
    alone = {s: decoded(worker, [s])[s] for s in range(3)}
    together = decoded(worker, [0, 1, 2])
    for seq in range(3):
        assert torch.equal(together[seq], alone[seq]), seq
    for k in (2, 4, 8):
        assert torch.equal(verified_in_chains(worker, 1, k), alone[1]), k
    assert torch.equal(verified_in_a_tree(worker, 2), alone[2][:5])


@pytest.mark.real_model
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_real_model_gives_the_same_bits(dtype):
    worker, _ = build_target(EngineConfig(dtype=dtype, max_batch=4, exact=True))
    alone = {s: decoded(worker, [s])[s] for s in range(3)}
    together = decoded(worker, [0, 1, 2])
    assert all(torch.equal(together[s], alone[s]) for s in range(3))
    assert torch.equal(verified_in_chains(worker, 1, 4), alone[1])
    assert torch.equal(verified_in_a_tree(worker, 2), alone[2][:5])


@pytest.mark.parametrize("spec", [SpecParams(method="chain", gamma=4), SpecParams(method="tree", tree_depth=4,
                                  tree_topk=3, tree_nodes=10), SpecParams(method="mirror", gamma=3)],
                         ids=lambda s: s.method)
def test_every_method_equals_ar_in_bfloat16(spec):
    target = cast(tiny_model("llama", VOCAB, seed=1, sharpness=4.0), torch.bfloat16)
    drafter = noisy_copy(target, 0.4, seed=2)
    sampling = SamplingParams(max_new_tokens=20, ignore_eos=True)

    def engine(with_drafter: bool, batch: int) -> Engine:
        return Engine(ModelWorker(target, max_slots=batch, capacity=160, max_spec_nodes=16, exact=True),
                      ModelWorker(drafter, max_slots=batch, capacity=160, max_spec_nodes=16) if with_drafter else None,
                      max_model_len=128, max_batch=batch, max_spec_nodes=16)

    prompts = PROMPTS * 2
    ar = [o.token_ids for o in engine(False, 1).generate(prompts, sampling)]
    for batch in (1, 4):
        outs = engine(True, batch).generate(prompts, sampling, spec)
        assert [o.token_ids for o in outs] == ar
        assert sum(o.stats.accepted for o in outs) > 0
