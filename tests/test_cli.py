"""The `mirrorspec` command line: outputs, JSONL batches, and exit code 2 with the field named on bad input."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

from mirrorspec.cli.main import build_parser, main, resolve_config
from mirrorspec.cluster.launch import SECRET_ENV


@pytest.mark.parametrize(
    "argv, field",
    [
        (["generate", "hi", "--temperature", "-1"], "temperature"),
        (["generate", "hi", "--top-p", "0"], "top_p"),
        (["generate", "hi", "--top-p", "1.2"], "top_p"),
        (["generate", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (["generate", "hi", "--method", "lookahead"], "method"),
        (["generate", "hi", "--gamma", "0", "--method", "chain"], "gamma"),
        (["generate", "hi", "--target", "/no/such/model"], "target"),
        (["generate", "hi", "--max-new-tokens", "100000"], "max_new_tokens"),
        (["generate", "   "], "prompt"),
        (["generate"], "prompt"),
        (["generate", "--input", "x.jsonl"], "output"),
        (["generate", "hi", "--seed", str(2**64)], "seed"),
        (["generate", "hi", "--method", "mirror", "--tp", "2", "--drafter", "none"], "drafter"),
        (["generate", "hi", "--config", "."], "config"),
        (["generate", "--input", "NON_UTF8", "--output", "out.jsonl"], "input"),
        (["generate", "hi", "--config", "NON_UTF8"], "NON_UTF8"),
        (["generate", "--input", "NON_UTF8", "--output", "/no/such/folder/out.jsonl"], "output"),
        (["generate", "--input", "NON_UTF8", "--output", "."], "output"),
        # The bench checks every method before running any: the shipped drafter is feature-conditioned.
        (["bench", "--methods", "ar,chain,hf-assisted", "--out", "OUT"], "hf_assistant"),
        (["bench", "--methods", "ar,chain", "--drafter", "none", "--out", "OUT"], "drafter"),
        (["bench", "--methods", "ar,lookahead", "--out", "OUT"], "method"),
        (["bench", "--methods", "ar,hf-generate", "--hf-dtype", "float8", "--out", "OUT"], "hf_dtype"),
        (["bench", "--methods", "ar", "--categories", "coding,poetry", "--out", "OUT"], "categories"),
    ],
)
def test_bad_input_exits_2_naming_the_field(argv, field, capsys, tmp_path):
    non_utf8 = tmp_path / "NON_UTF8"  # a config or input file that is not text
    non_utf8.write_bytes(b"prompt: \xff\xfe\n")
    argv = [{"NON_UTF8": str(non_utf8), "OUT": str(tmp_path / "results")}.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {str(non_utf8) if field == 'NON_UTF8' else field}" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()  # nothing ran, nothing written


def test_console_script_exit_code():
    exe = shutil.which("mirrorspec") or str(__import__("pathlib").Path(sys.executable).parent / "mirrorspec")
    run = subprocess.run([exe, "generate", "hi", "--temperature", "-3"], capture_output=True, text=True)
    assert run.returncode == 2 and "temperature" in run.stderr


def test_bad_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "ray_config.yaml"
    config.write_text("engine:\n  max_btach: 4\n")
    assert main(["generate", "hi", "--config", str(config)]) == 2
    assert "engine.max_btach" in capsys.readouterr().err


@pytest.mark.real_model
def test_json_output_has_text_ids_and_stats(capsys):
    assert main(["generate", "What is 2 + 2?", "--chat", "--json", "--method", "chain", "--drafter", "self",
                 "--max-new-tokens", "12"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] and len(record["token_ids"]) <= 12
    assert record["method"] == "chain" and record["stats"]["tau"] >= 1.0
    assert {"drafted", "accepted", "acceptance_rate", "acceptance_by_position", "ttft_s", "tpot_s",
            "tokens_per_s"} <= set(record["stats"])
    # A penalty and logprobs: chain gives ar's tokens and ar's numbers (the exact path).
    penalised = ["generate", "What is 2 + 2?", "--chat", "--json", "--drafter", "self", "--max-new-tokens", "12",
                 "--repetition-penalty", "1.3", "--logprobs", "2"]
    runs = []
    for method in ("ar", "chain"):
        assert main(penalised + ["--method", method]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0]["token_ids"] == runs[1]["token_ids"] and runs[0]["logprobs"] == runs[1]["logprobs"]
    assert [x["token_id"] for x in runs[0]["logprobs"]] == runs[0]["token_ids"]
    assert all(len(x["top"]) == 2 for x in runs[0]["logprobs"]) and runs[1]["stats"]["accepted"] > 0


@pytest.mark.real_model
def test_jsonl_batch_keeps_going_past_bad_rows(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [
        {"id": "a", "prompt": "Name a colour."},
        {"id": "b", "prompt": ""},
        {"id": "c", "prompt": "Name a fruit.", "temperature": -2},
        {"id": "d", "prompt": "Name an animal.", "max_new_tokens": 6},
        {"id": "e", "prompt": 42},
        {"id": "f", "prompt": None},
        {"id": "g", "prompt": "Count: one, two, three.", "stop": "two"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["generate", "--input", str(src), "--output", str(dst), "--chat", "--method", "tree",
                 "--drafter", "self", "--max-new-tokens", "10"]) == 2
    out = {r["id"]: r for r in map(json.loads, dst.read_text().splitlines())}
    assert out["b"]["error"].startswith("prompt:") and out["c"]["error"].startswith("temperature:")
    assert out["e"]["error"].startswith("prompt:") and out["f"]["error"].startswith("prompt:")
    assert out["a"]["text"] and out["d"]["text"] and len(out["d"]["token_ids"]) <= 6
    assert "two" not in out["g"]["text"] and out["g"]["finish_reason"] in ("stop", "length", "eos")
    assert "4 errors" in capsys.readouterr().err


@pytest.mark.real_model
def test_bench_compares_methods_dtypes_and_exactness_in_one_run(tmp_path, capsys):
    """One bench run (the suite's time): our methods and transformers' next to them, at two dtypes, each prompt
    through every method on both (--interleave), with results, plot, per-category rows and the ratios against ar
    and against transformers' generate."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"p{i}", "category": c, "prompt": p}) for i, (c, p) in enumerate(
        [("qa", "What is the capital of Italy?"), ("math", "What is 12 times 3?")])) + "\n")
    # Adaptive speculation off: its budget follows this machine's measured cost curve and may verify fewer nodes;
    # whole drafts of the target's own tokens are all accepted, whatever the machine.
    chain = "chain:gamma=3+adaptive=off"
    assert main(["bench", "--prompts", str(prompts), "--methods", f"ar,{chain},hf-assisted,hf-generate",
                 "--drafter", "self", "--variants", "float32:fast,bfloat16:exact", "--interleave",
                 "--max-new-tokens", "6", "--cost-repeats", "1", "--ray", "never", "--out", str(tmp_path),
                 "--name", "v"]) == 0
    results = json.loads((tmp_path / "v.json").read_text())
    assert (tmp_path / "v.png").stat().st_size > 10_000
    assert list(results["variants"]) == ["float32:fast", "bfloat16:exact"]
    fast = results["variants"]["float32:fast"]["methods"]
    for method in ("ar", chain, "hf-assisted"):
        overall = fast[method]["overall"]
        assert overall["prompts"] == 2 and overall["tokens_per_s"] > 0
        assert overall["equal_to_ar"] == 2  # every method is lossless against ar
    assert fast[chain]["overall"]["tau"] > 1.5  # the target drafting for itself
    assert set(fast[chain]["categories"]) == {"qa", "math"}
    exact = results["variants"]["bfloat16:exact"]
    assert exact["dtype"] == "bfloat16" and exact["exact"] is True and exact["interleaved"] is True
    assert exact["exact_attention"] == "C kernel" and results["variants"]["float32:fast"]["exact_attention"] is None
    assert exact["methods"][chain]["overall"]["equal_to_ar"] == 2  # exact: bf16 chain equals bf16 ar
    assert set(exact["verify_cost"]["ms"]) == {"1", "2", "4", "8", "16", "32"}
    rows = {(r["variant"], r["method"]): r for r in results["summary"]}
    assert rows[("float32:fast", "ar")]["vs_first_ar"] == 1.0
    assert rows[("float32:fast", "hf-generate")]["vs_hf_generate_fp32"] == 1.0
    assert main(["bench", "--variants", "float32:quick", "--ray", "never", "--out", str(tmp_path)]) == 2
    assert "variants: 'float32:quick': write DTYPE:exact or DTYPE:fast" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--cost-repeats", "0", "--out", str(tmp_path)])
    assert "--cost-repeats: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.real_model
def test_bench_categories_pick_whole_categories_in_file_order():
    from mirrorspec.bench.harness import load_prompts

    every = load_prompts(None)
    picked = load_prompts(None, categories="extraction, coding")
    assert picked == [r for r in every if r["category"] in ("coding", "extraction")] and len(picked) > 2
    coding = [r for r in every if r["category"] == "coding"]
    assert load_prompts(None, per_category=2, categories="coding") == coding[:2]


def test_bench_interleaves_methods_prompt_by_prompt(tmp_path):
    """--interleave: every method on each prompt in turn, with transformers at its own --hf-dtype."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"p{i}", "category": c, "prompt": p}) for i, (c, p) in enumerate(
        [("qa", "Name a primary colour."), ("math", "What is 7 plus 5?")])) + "\n")
    chain = "chain:gamma=3+adaptive=off"
    assert main(["bench", "--prompts", str(prompts), "--methods", f"ar,{chain},chain,hf-generate", "--drafter", "self",
                 "--interleave", "--hf-dtype", "float32", "--dtype", "bfloat16", "--max-new-tokens", "6",
                 "--cost-repeats", "1", "--out", str(tmp_path), "--name", "i"]) == 0
    results = json.loads((tmp_path / "i.json").read_text())
    assert results["interleaved"] is True and results["hf_dtype"] == "float32" and results["dtype"] == "bfloat16"
    for method in ("ar", chain, "hf-generate"):
        assert results["methods"][method]["overall"]["prompts"] == 2
    assert results["methods"][chain]["overall"]["equal_to_ar"] == 2
    assert results["methods"][chain]["overall"]["tau"] > 1.5  # the target drafting for itself
    assert results["methods"]["chain"]["overall"]["equal_to_ar"] == 2
    curve = {int(k): v for k, v in results["step_cost"].items()}  # what the adaptive `chain` was sized by
    assert curve[1] == 1.0 and list(curve.values()) == sorted(curve.values())


def test_a_sampled_bench_seeds_each_prompt_and_reports_no_token_equality(tmp_path, capsys):
    """--temperature: every method samples each prompt with the seed its id gives (the engine's own sampled output
    for that seed), and no '= ar' count is claimed (speculation keeps ar's law, not its tokens)."""
    from mirrorspec.bench.harness import EngineMethod, prompt_seed
    from mirrorspec.orchestration.engine import EngineConfig
    from mirrorspec.orchestration.factory import build_engine
    from mirrorspec.params import SamplingParams, SpecParams

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "q1", "category": "qa", "prompt": "Name a primary colour."}) + "\n")
    assert main(["bench", "--prompts", str(prompts), "--methods", "ar,tree", "--drafter", "self", "--temperature",
                 "0.9", "--max-new-tokens", "6", "--cost-repeats", "1", "--out", str(tmp_path), "--name", "s"]) == 0
    results = json.loads((tmp_path / "s.json").read_text())
    assert results["temperature"] == 0.9
    assert all("equal_to_ar" not in m["overall"] for m in results["methods"].values())
    assert results["methods"]["tree"]["overall"]["tau"] > 1.0
    assert capsys.readouterr().out.splitlines()[-1].endswith(" -")  # the '=ar' column
    engine = build_engine(EngineConfig(drafter=None, max_model_len=256))
    row = {"id": "q1", "category": "qa", "prompt": "Name a primary colour."}
    (record,) = EngineMethod(engine, SpecParams("ar"), 12, 0.9)([row])
    (out,) = engine.generate([row["prompt"]], SamplingParams(max_new_tokens=12, temperature=0.9,
                                                             seed=prompt_seed("q1")), SpecParams("ar"), chat=True)
    assert record.tokens == out.token_ids
    with pytest.raises(SystemExit):
        main(["bench", "--temperature", "-1", "--out", str(tmp_path)])


def test_channel_summary_follows_the_mirror_latency_model():
    from mirrorspec.bench.harness import Record, channel_summary

    stats = {"steps": 10, "proposes": 10, "late": 1, "wait_s": 0.3, "drafter_busy_s": 1.0, "drafter_propose_s": 0.2,
             "target_s": 1.9, "propose_s": 0.3, "exit_steps": 10, "lower_s": 0.9, "exit_s": 0.01, "upper_s": 0.9}
    record = Record("a", "c", [1], 1.0, 10, drafts=10, reused=3, exit_checked=10, exit_covered=4)
    out = channel_summary(stats, 0.001, [record])
    # Waits 30 ms/step of which 1 ms is the round trip; the drafter computed 100 ms/step: 71% hidden.
    assert out["hidden_fraction"] == pytest.approx(1 - (0.3 - 10 * 0.001) / 1.0)
    # Eq. 10: lower 90 + exit 1 + max(upper 90, rollout 80) + round trip 1; plus 20 ms of fresh drafts.
    assert out["eq10_predicted_step_ms"] == pytest.approx(182.0)
    assert out["eq10_plus_fresh_drafts_ms"] == pytest.approx(202.0)
    assert out["rollout_hidden_fraction"] == 1.0 and out["late_drafts"] == 1
    assert (out["branch_reuse_rate"], out["exit_coverage"]) == (0.3, 0.4)


@pytest.mark.real_model
def test_served_drafter_without_ray_equals_ar(capsys):
    """`mirrorspec serve-drafter` in its own process, the target here dialing it with --drafter-address."""
    import torch

    threads = torch.get_num_threads()  # the target role below takes cluster.target's thread count for this process
    exe = shutil.which("mirrorspec") or str(__import__("pathlib").Path(sys.executable).parent / "mirrorspec")
    os.environ[SECRET_ENV] = "test-secret"  # the drafter below inherits it; the target here reads it
    server = subprocess.Popen([exe, "serve-drafter", "--port", "0", "--threads", "1"], stdout=subprocess.PIPE,
                              text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving the speculation channel on 127.0.0.1:"), line
        address = line.split()[-1]
        prompt = ["generate", "List three primary colours.", "--chat", "--json", "--max-new-tokens", "24"]
        assert main([*prompt, "--method", "ar", "--ray", "never"]) == 0
        ar = json.loads(capsys.readouterr().out)
        for method in ("mirror", "chain"):
            assert main([*prompt, "--method", method, "--drafter-address", address]) == 0
            out = json.loads(capsys.readouterr().out)
            assert out["token_ids"] == ar["token_ids"]
            assert out["stats"]["drafted"] > 0  # the drafts came from the served drafter
    finally:
        del os.environ[SECRET_ENV]
        torch.set_num_threads(threads)
        server.terminate()
        assert server.wait(timeout=30) == 0


def test_drafter_address_is_checked(capsys):
    assert main(["generate", "hi", "--drafter-address", "nowhere"]) == 2
    assert "cluster.drafter_address" in capsys.readouterr().err


def test_the_gpu_npu_example_config_is_valid():
    from pathlib import Path

    from mirrorspec.cluster.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "gpu-npu-cluster.yaml")
    assert config.cluster.tp_size == 8 and config.cluster.drafter.resources == {"npu": 1}
    assert config.serve.token_env == "MIRRORSPEC_TOKEN"


@pytest.mark.parametrize("flag, field", [("--port", "serve.port"), ("metrics", "serve.metrics_port")])
def test_serve_on_a_busy_port_exits_2_before_starting(flag, field, tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "ray_config.yaml"
        config.write_text(f"serve: {{port: 0, metrics_port: {port if flag == 'metrics' else 0}}}\n"
                          "cluster: {ray: never}\n")
        argv = ["serve", "--config", str(config)] + (["--port", str(port)] if flag == "--port" else [])
        assert main(argv) == 2
    assert f"error: {field}: 127.0.0.1:{port} is not free" in capsys.readouterr().err


def test_every_flag_of_every_subcommand_has_help():
    from mirrorspec.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in [("mirrorspec", parser), *commands.choices.items()] for action in sub._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert not missing
    serve_drafter = commands.choices["serve-drafter"]
    assert not {"--ray", "--tp", "--drafter-address"} & {s for a in serve_drafter._actions for s in a.option_strings}


@pytest.mark.parametrize("flags, drafter, method", [
    ([], None, "ngram"),  # nothing chosen: no drafter model, model-free drafts
    (["--method", "tree"], None, "tree"),  # a method named explicitly is kept (and refused: no drafter)
    (["--drafter", "default"], "default", "tree"),  # so is a drafter (refused: not this target's)
    (["--drafter", "self"], "self", "tree"),
])
def test_a_target_of_ones_own_runs_without_the_shipped_drafter(tmp_path, flags, drafter, method):
    args = build_parser({"generate"}).parse_args(["generate", "hi", "--target", str(tmp_path), *flags])
    engine, spec, _ = resolve_config(args)
    assert (engine.drafter, spec.method) == (drafter, method)
    default, default_spec, _ = resolve_config(build_parser({"generate"}).parse_args(["generate", "hi"]))
    assert (default.drafter, default_spec.method) == ("default", "tree")  # the default target keeps its drafter


def test_the_shipped_config_restates_the_built_in_defaults():
    """One source of defaults: what runs in any directory (no ray_config.yaml there) is what the shipped
    ray_config.yaml says."""
    from pathlib import Path

    from mirrorspec.cluster.config import ProjectConfig, load_config

    assert load_config(Path(__file__).parents[1] / "ray_config.yaml") == ProjectConfig()
