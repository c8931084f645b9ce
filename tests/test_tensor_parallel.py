"""The target split over 2 DeepSpeed AutoTP ranks (Ray actors on the two cores, gloo + shared-memory all-reduce).

One group serves the whole module (its start builds DeepSpeed's shared-memory op once per run, cached in
~/.cache/torch_extensions); the last test kills one of its ranks.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray

from helpers import wait_until
from mirrorspec.cluster.config import ClusterConfig, ProjectConfig, RoleConfig
from mirrorspec.cluster.pipeline import Pipeline, TargetGroupError
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.factory import build_engine
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers.model_worker import greedy_logits

BENCH_PROMPTS = Path(__file__).resolve().parents[1] / "bench" / "prompts" / "spec_bench_mini.jsonl"
# Split ranks add partial sums in an all-reduce of their own: the exact path is refused there (see below).
ENGINE = EngineConfig(target="default", drafter="default", max_batch=4, exact=False, dtype="float32")
TP2 = ClusterConfig(num_cpus=2, tp_size=2, target=RoleConfig(resources={"CPU": 0.5}, threads=1, cores=[0, 1]),
                    drafter=RoleConfig(resources={"CPU": 1}, threads=1, cores=[1]))


@pytest.fixture(scope="module")
def tp2(ray_cluster):
    pipeline = Pipeline(ProjectConfig(engine=ENGINE, cluster=TP2))
    yield pipeline
    pipeline.shutdown()


@pytest.fixture(scope="module")
def single():
    """The same target unsplit, in this process: the reference."""
    return build_engine(EngineConfig(target="default", drafter=None, max_batch=4, exact=False, dtype="float32"))


@pytest.mark.real_model
def test_tp2_logits_match_tp1(tp2, single):
    ids = single.encode("Explain why the sky is blue.", chat=True)
    split = tp2.probe_logits(ids, steps=8)  # the prompt, then 8 greedy steps through each rank's KV shard
    whole = greedy_logits(single.target, ids, steps=8)
    assert split.shape == whole.shape == (9, single.target.vocab_size)
    assert (split - whole).abs().max().item() <= 1e-4
    # The prompt's logprobs (TGIS's input tokens, OpenAI's echo) come from the split target's logits as well.
    asked = SamplingParams(max_new_tokens=1, prompt_logprobs=2)
    (split_out,) = tp2.generate(["Explain why the sky is blue."], asked, SpecParams("ar"), chat=True)
    (whole_out,) = single.generate(["Explain why the sky is blue."], asked, SpecParams("ar"), chat=True)
    assert len(split_out.prompt_logprobs) == len(ids) - 1
    for got, want in zip(split_out.prompt_logprobs, whole_out.prompt_logprobs):
        assert got.token_id == want.token_id and abs(got.logprob - want.logprob) <= 1e-4
        assert [t for t, _ in got.top] == [t for t, _ in want.top]


@pytest.mark.real_model
def test_every_method_on_the_tp_group_equals_ar(tp2, single):
    rows = [json.loads(line) for line in BENCH_PROMPTS.read_text().splitlines()]
    prompts = [r["prompt"] for r in rows[:: len(rows) // 2][:2]]  # two: still a batch (the suite's time limit)
    sampling = SamplingParams(max_new_tokens=20)
    reference = [o.token_ids for o in single.generate(prompts, sampling, SpecParams("ar"), chat=True)]
    for method in ("ar", "chain", "tree", "mirror"):
        outs = tp2.generate(prompts, sampling, SpecParams(method, gamma=3), chat=True)
        assert [o.token_ids for o in outs] == reference, method
        if method != "ar":
            assert sum(o.stats.drafted for o in outs) > 0
    streamed = list(tp2.stream(prompts[0], sampling, SpecParams("mirror", gamma=3), chat=True))
    assert streamed[-1].token_ids == reference[0]


def test_tp_size_beyond_the_kv_heads_fails_before_any_rank_starts():
    # SmolLM2-135M has 3 KV heads: a 4th rank would hold none.
    config = ProjectConfig(engine=ENGINE, cluster=ClusterConfig(tp_size=4))
    with pytest.raises(InvalidRequestError, match="cluster.tp_size: 4 ranks but the target has 3 KV heads"):
        Pipeline(config)


def test_the_exact_path_with_tensor_parallelism_fails_before_any_rank_starts():
    config = ProjectConfig(engine=EngineConfig(target="default", max_batch=4), cluster=ClusterConfig(tp_size=2))
    with pytest.raises(InvalidRequestError, match="engine.exact: is not available with tensor parallelism"):
        Pipeline(config)


def test_a_group_the_cluster_cannot_hold_fails_naming_the_resource(ray_cluster):
    # Two ranks of {CPU: 1} and a drafter of {CPU: 1} on a 2-CPU cluster.
    with pytest.raises(InvalidRequestError, match="cluster.resources.CPU: the pipeline needs 3 CPU"):
        Pipeline(ProjectConfig(engine=ENGINE, cluster=ClusterConfig(num_cpus=2, tp_size=2)))


@pytest.mark.parametrize("cluster, field", [
    (dict(tp_size=0), "cluster.tp_size"),
    (dict(tp_size=2, ray="never"), "cluster.tp_size"),
    (dict(tp_size=2, target=RoleConfig(cores=[0, 1, 2])), "cluster.target.cores"),
])
def test_bad_tp_settings_name_the_field(cluster, field):
    with pytest.raises(InvalidRequestError, match=field):
        ClusterConfig(**cluster).validate()


@pytest.mark.real_model
def test_killing_a_rank_mid_request_fails_the_request_clearly_and_a_new_group_takes_over(tp2, single):
    """Runs last in this module: it takes the shared group down, then restarts it."""
    ref = tp2.generate_async(["Write a long story about a lighthouse keeper."], SamplingParams(max_new_tokens=200),
                             SpecParams("mirror", gamma=3), chat=True)
    # Mid-request: the group has decoded a few steps and the request is still running.
    wait_until(lambda: tp2.progress() >= 3, 120, "the group decoded nothing", 0.05)
    assert not ray.wait([ref], timeout=0)[0]
    tp2.kill_target_rank(1)
    # what a Serve replica's health check reads (rank 0 alone may still answer)
    wait_until(lambda: not tp2.group_alive(), 30, "the dead rank was not seen", 0.05)
    with ThreadPoolExecutor(1) as pool:  # a hang would fail here, after 60 s, instead of stalling the suite
        waiting = pool.submit(tp2.get, ref)
        with pytest.raises(TargetGroupError, match="target rank 1 of 2 died"):
            waiting.result(timeout=60)
    with pytest.raises(TargetGroupError, match="group is down"):  # later requests too, at once
        tp2.generate(["hi"], SamplingParams(max_new_tokens=2))
    tp2.restart_target()
    sampling = SamplingParams(max_new_tokens=12)
    again = tp2.generate(["Name a colour."], sampling, SpecParams("mirror", gamma=3), chat=True)
    assert again[0].token_ids == single.generate(["Name a colour."], sampling, SpecParams("ar"), chat=True)[0].token_ids
