"""The Ray pipeline: drafter and target in separate actors on a real local Ray cluster, joined by gRPC."""

import json
from pathlib import Path

import pytest

from helpers import noisy_copy, tiny_model, wait_until
from mirrorspec.cluster.config import ClusterConfig, ProjectConfig, RoleConfig
from mirrorspec.cluster.pipeline import Pipeline
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.params import SamplingParams, SpecParams
from test_sampling_law import SETTINGS, SPECS, VOCAB, accepted_at_depth, exact_ar_law, excess, sampled_law

BENCH_PROMPTS = Path(__file__).resolve().parents[1] / "bench" / "prompts" / "spec_bench_mini.jsonl"


def save(loaded, folder: Path) -> str:
    loaded.model.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def tiny_law_pipeline(ray_cluster, tmp_path_factory):
    """The sampling-law test's tiny target and drafter, each in its own actor on one of the two CPUs."""
    root = tmp_path_factory.mktemp("tiny-law")
    target = tiny_model("llama", VOCAB, seed=11, sharpness=6.0)
    drafter = noisy_copy(target, 0.3, seed=5)
    engine = EngineConfig(target=save(target, root / "target"), drafter=save(drafter, root / "drafter"),
                          max_batch=256, max_model_len=24, max_spec_nodes=16)
    pipeline = Pipeline(ProjectConfig(engine=engine, cluster=ClusterConfig(num_cpus=2)))
    yield target, pipeline
    pipeline.shutdown()


def test_sampling_law_through_the_actors(tiny_law_pipeline):
    target, pipeline = tiny_law_pipeline
    settings = SETTINGS["T=1,top_p=0.8"]  # stops at no EOS: the saved tiny models' EOS id is another one
    seen, outs = sampled_law(target, None, SPECS["mirror"], settings, generate=pipeline.generate)
    assert excess(seen, exact_ar_law(target, SamplingParams(**settings))) <= 0.0
    assert accepted_at_depth(outs, 3) > 0
    stats = pipeline.channel_stats()
    assert stats["proposes"] > 0 and stats["exit_steps"] > 0  # it really went through the drafter actor


def test_missing_resources_fail_early_naming_them(ray_cluster):
    cluster = ClusterConfig(drafter=RoleConfig(resources={"npu": 1}))
    with pytest.raises(InvalidRequestError, match="npu"):
        Pipeline(ProjectConfig(engine=EngineConfig(drafter="self"), cluster=cluster))


@pytest.fixture
def default_pipeline(ray_cluster):
    """The default pair (SmolLM2-135M-Instruct and its shipped drafter), one core each."""
    engine = EngineConfig(target="default", drafter="default", max_batch=4)
    pipeline = Pipeline(ProjectConfig(engine=engine, cluster=ClusterConfig(num_cpus=2, reply_timeout_s=5)))
    yield pipeline
    pipeline.shutdown()


def bench_prompts(n):
    rows = [json.loads(line) for line in BENCH_PROMPTS.read_text().splitlines()]
    return [r["prompt"] for r in rows[:: len(rows) // n][:n]]


@pytest.mark.real_model
def test_mirror_through_actors_equals_ar_and_loses_nothing_when_the_drafter_dies(default_pipeline, ray_cluster):
    """Batch 4 and batch 1 equal ar; then the drafter's actor is killed in the middle of a batch's drafting work,
    and the batch still finishes equal to ar (decoding without drafts). One pipeline for both: the suite's time."""
    prompts = bench_prompts(6)
    sampling = SamplingParams(max_new_tokens=24)
    ar = [o.token_ids for o in default_pipeline.generate(prompts, sampling, SpecParams("ar"), chat=True)]
    mirror = SpecParams("mirror", gamma=3)
    batched = default_pipeline.generate(prompts, sampling, mirror, chat=True)  # 4 at a time
    single = [default_pipeline.generate([p], sampling, mirror, chat=True)[0] for p in prompts[:3]]
    assert [o.token_ids for o in batched] == ar
    assert [o.token_ids for o in single] == ar[:3]
    assert all(o.stats.exit_checked > 0 for o in batched + single)

    started = default_pipeline.progress()
    pending = default_pipeline.generate_async(prompts[:4], sampling, mirror, chat=True)
    # Until some drafts have arrived: the drafter is in the middle of its work, the request still running.
    wait_until(lambda: default_pipeline.progress() >= started + 4, 120, "no draft arrived", 0.02)
    assert not ray_cluster.wait([pending], timeout=0)[0]
    default_pipeline.kill_drafter()
    outs = ray_cluster.get(pending)
    assert [o.token_ids for o in outs] == ar[:4]
    assert all(o.finish_reason in ("length", "eos") for o in outs)
    assert sum(o.stats.fallback_steps for o in outs) > 0


@pytest.mark.real_model
def test_cli_generate_mirror_runs_on_two_actors_and_equals_ar(ray_cluster, capsys):
    from mirrorspec.cli.main import main

    args = ["generate", "Name three colours of the rainbow.", "--chat", "--max-new-tokens", "12", "--json"]
    assert main(args + ["--method", "ar", "--ray", "never"]) == 0
    ar = json.loads(capsys.readouterr().out)
    assert main(args + ["--method", "mirror", "--gamma", "3"]) == 0  # ray: auto -> two actors for mirror
    mirror = json.loads(capsys.readouterr().out)
    assert mirror["token_ids"] == ar["token_ids"]
    assert mirror["stats"]["exit_coverage"] is not None and mirror["stats"]["drafted"] > 0
