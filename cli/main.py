"""The `mirrorspec` command line: generate (one prompt or a JSONL file) and bench.

Bad input exits with status 2 and a message that names the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from mirrorspec.errors import InvalidRequestError
from mirrorspec.methods import AR_DRAFTER, DIFFUSION_DRAFTER, ENGINE_METHODS, METHODS
from mirrorspec.orchestration.prompts import add_chat_args
from mirrorspec.params import SamplingParams, SpecParams

logger = logging.getLogger("mirrorspec")

EXIT_BAD_INPUT = 2


def _add_engine_args(p: argparse.ArgumentParser, *, placement: bool = True) -> None:
    """Model and engine flags; `placement` adds where the target runs (Ray, tensor parallelism, a remote drafter),
    which means nothing to a drafter's own server."""
    g = p.add_argument_group("models and engine (defaults from ray_config.yaml)")
    g.add_argument("--config", help="path to ray_config.yaml (default: $MIRRORSPEC_CONFIG or ./ray_config.yaml)")
    g.add_argument("--target", help="target model: a local HF folder or 'default'")
    g.add_argument("--drafter", help="drafter model: a local HF folder, 'self', or 'none'")
    g.add_argument("--dtype", help="auto (bfloat16 where the device has native bf16, else float32) | float32 | "
                                  "bfloat16 | float16")
    g.add_argument("--device", help="cpu | cuda | cuda:N")
    g.add_argument("--drafter-device", help="device of the drafter (default: --device)")
    g.add_argument("--max-batch", type=int, help="sequences decoded together")
    g.add_argument("--max-model-len", type=int, help="prompt + new tokens per sequence")
    g.add_argument("--threads", type=int, help="torch intra-op threads")
    g.add_argument("--ngram-corpus", help="what ngram drafts also copy from: 'default' (the default target's own "
                                          "answers), a JSONL file of {\"text\": ...} rows (.gz too), or 'none'")
    g.add_argument("--exact", action=argparse.BooleanOptionalAction, default=None,
                   help="the target computes every token to the same bits alone, in a draft or in a batch: every "
                        "method equals ar at any dtype (default: engine.exact)")
    if not placement:
        return
    g.add_argument("--ray", choices=("auto", "always", "never"),
                   help="run target and drafter as Ray actors (auto: for --method mirror); see cluster in ray_config.yaml")
    g.add_argument("--tp", dest="tp_size", type=int,
                   help="split the target over this many tensor-parallel ranks (DeepSpeed AutoTP, Ray actors)")
    g.add_argument("--drafter-address", help="HOST:PORT of a drafter started with `mirrorspec serve-drafter`: the "
                                             "target runs in this process and dials it (no Ray)")


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculation (defaults from ray_config.yaml)")
    g.add_argument("--gamma", type=int, help="chain: draft tokens per step")
    g.add_argument("--tree-depth", type=int, help="tree: levels")
    g.add_argument("--tree-topk", type=int, help="tree: children kept per level")
    g.add_argument("--tree-nodes", type=int, help="tree: nodes verified per step")
    g.add_argument("--exit-layer", type=int, help="mirror: the target's early-exit layer (default: half its layers)")
    g.add_argument("--kappa", type=int, help="mirror: early-exit candidates per window position")
    g.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=None,
                   help="verify only the part of each draft that pays at the current load (default on); "
                        "--no-adaptive verifies every draft whole")
    g.add_argument("--ngram-branches", action=argparse.BooleanOptionalAction, default=None,
                   help="chain/tree: merge what ngram would draft into the drafter's tree (default on)")
    g.add_argument("--use-corpus", action=argparse.BooleanOptionalAction, default=None,
                   help="ngram drafts and branches also copy from the engine's corpus (--ngram-corpus; default: "
                        "on for ngram, off for the branches of a model draft)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling and stopping")
    g.add_argument("--max-new-tokens", type=int, default=128, help="the most tokens to generate")
    g.add_argument("--min-new-tokens", type=int, default=0, help="EOS cannot end the answer before this many tokens")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens with this "
                                                           "much probability (1 = off)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--seed", type=int, help="seed of this request's random draws (64-bit; default: engine.seed)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages tokens already in the prompt or the answer (1 = off; exact under speculation)")
    g.add_argument("--logprobs", type=int, help="with --json: each token's logprob and rank from the target, and the "
                                                "N most likely tokens at each position")


def _generate_args(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("prompt", nargs="?", help="the prompt (or use --input)")
    gen.add_argument("--method", help=" | ".join(METHODS))
    gen.add_argument("--stream", action="store_true", help="print tokens as they are accepted")
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")
    gen.add_argument("--input", help="JSONL file: one {\"prompt\": ...} or {\"messages\": [{\"role\", \"content\"}, "
                                     "...]} per line (optional per-line sampling keys)")
    gen.add_argument("--output", help="JSONL file for --input results")
    add_chat_args(gen)
    _add_engine_args(gen)
    _add_spec_args(gen)
    _add_sampling_args(gen)
    from mirrorspec.cli.generate_diffusion import add_diffusion_args

    add_diffusion_args(gen)


def _chat_args(chat: argparse.ArgumentParser) -> None:
    chat.add_argument("--system", help="a system message that opens the conversation")
    chat.add_argument("--method", help=" | ".join(ENGINE_METHODS))
    _add_engine_args(chat)
    _add_spec_args(chat)
    _add_sampling_args(chat)


def _bench_args(bench: argparse.ArgumentParser) -> None:
    from mirrorspec.bench.harness import add_bench_args

    add_bench_args(bench)
    _add_engine_args(bench)
    _add_spec_args(bench)


def _train_drafter_args(train: argparse.ArgumentParser) -> None:
    from mirrorspec.training.train_drafter import add_train_args

    add_train_args(train)


def _bench_diffusion_args(bench: argparse.ArgumentParser) -> None:
    from mirrorspec.bench.diffusion_bench import add_bench_diffusion_args

    add_bench_diffusion_args(bench)


def _train_dllm_args(dllm: argparse.ArgumentParser) -> None:
    from mirrorspec.training.dllm import add_train_dllm_args

    add_train_dllm_args(dllm)


def _serve_drafter_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, help="port (default: cluster.drafter_port; 0 = any free port)")
    _add_engine_args(serve, placement=False)


def _serve_args(service: argparse.ArgumentParser) -> None:
    service.add_argument("--host", help="interface to listen on (default: serve.host, 127.0.0.1)")
    service.add_argument("--port", type=int, help="gRPC port (default: serve.port; 0 = any free port)")
    service.add_argument("--http-port", type=int, help="OpenAI-compatible HTTP port (default: serve.http_port; "
                                                       "0 = any free port)")
    _add_engine_args(service)
    _add_spec_args(service)
    service.add_argument("--method", help=f"the default method of requests that name none "
                                          f"({' | '.join(ENGINE_METHODS)})")


def _scale_args(scale: argparse.ArgumentParser) -> None:
    scale.add_argument("replicas", type=int, help="replicas to serve with (0: only print the count and load)")
    scale.add_argument("--server", default="127.0.0.1:8033", help="the server's address")
    scale.add_argument("--token-env", help="environment variable holding the server's bearer token")
    scale.add_argument("--tls-ca", help="PEM of the CA that signed the server's certificate (a TLS server)")


def _cluster_args(cluster: argparse.ArgumentParser) -> None:
    cluster.add_argument("action", choices=("up", "down"),
                         help="up: start a Ray cluster of this project's own on free loopback ports and print the "
                              "exports for `ray job submit`; down: stop it (and nothing else)")
    cluster.add_argument("--num-cpus", type=int, help="CPUs the cluster offers (default: all)")


def _corpus_args(p: argparse.ArgumentParser) -> None:
    from mirrorspec.training.ngram_corpus_file import add_corpus_args

    add_corpus_args(p)


def _exit_head_args(head: argparse.ArgumentParser) -> None:
    from mirrorspec.training.train_exit_head import add_exit_head_args

    add_exit_head_args(head)


# name -> (one-line help, what adds its arguments). Arguments are added only for the command being run (several
# pull in torch), so that `mirrorspec --help` and `--version` answer at once.
SUBCOMMANDS = {
    "generate": ("generate for one prompt or a JSONL file of prompts", _generate_args),
    "chat": ("a multi-turn conversation in the terminal (answers stream; /stats, /reset, /exit)", _chat_args),
    "bench": ("compare methods on the bench prompt set", _bench_args),
    "train-drafter": ("distil a drafter for a target (self-distillation)", _train_drafter_args),
    "bench-diffusion": ("speed-quality table of diffusion strategies on the synthetic tasks", _bench_diffusion_args),
    "train-dllm": ("train a small masked-diffusion LM on the synthetic tasks, or (--from-drafter) adapt a token "
                   "drafter into a block-diffusion drafter", _train_dllm_args),
    "serve-drafter": ("serve the drafter's speculation channel for targets that dial it with --drafter-address "
                      "(no Ray)", _serve_drafter_args),
    "serve": ("serve the public GenerationService over gRPC (ray_config.yaml: serve)", _serve_args),
    "scale": ("set (or read, with 0) the replica count of a running `mirrorspec serve`", _scale_args),
    "train-exit-head": ("fit the early-exit head that mirror's early exit uses", _exit_head_args),
    "write-ngram-corpus": ("write an engine.ngram_corpus file from train-drafter data folders' answers",
                           _corpus_args),
    "cluster": ("start or stop a local Ray cluster for `ray job submit` (eval \"$(mirrorspec cluster up)\")",
                _cluster_args),
}


class HelpWithDefaults(argparse.HelpFormatter):
    """Each flag's help ends with its default where it has one of its own and does not say it already (a None
    default means: from ray_config.yaml, or as the help says)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is d for d in (None, False, argparse.SUPPRESS)) or action.default == [] \
                or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def build_parser(commands: set[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of `commands` (default: every command) filled in."""
    parser = argparse.ArgumentParser(prog="mirrorspec", description="Lossless speculative decoding engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO, and let libraries' warnings "
                                                                     "through")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpWithDefaults)
        if commands is None or name in commands:
            add_args(command)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mirrorspec")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def resolve_config(args: argparse.Namespace):
    """ray_config.yaml, overridden by the flags the user gave: (engine, speculation, cluster)."""
    from mirrorspec.cluster.config import find_config, for_own_target, load_config

    config = load_config(find_config(args.config))

    def given(*names: str) -> dict:
        # Only the flags the user gave (serve-drafter has no speculation flags).
        return {n: getattr(args, n, None) for n in names if getattr(args, n, None) is not None}

    engine = dataclasses.replace(config.engine, **given("target", "drafter", "dtype", "device", "drafter_device",
                                                        "max_batch", "max_model_len", "threads", "exact",
                                                        "ngram_corpus"))
    for name in ("drafter", "ngram_corpus"):
        if getattr(engine, name) == "none":
            engine = dataclasses.replace(engine, **{name: None})
    spec = dataclasses.replace(config.speculation, **given("method", "gamma", "tree_depth", "tree_topk",
                                                           "tree_nodes", "exit_layer", "kappa", "adaptive",
                                                           "ngram_branches", "use_corpus"))
    cluster = dataclasses.replace(config.cluster, **given("ray", "drafter_address", "tp_size"))
    engine, spec = for_own_target(engine, spec, drafter_given=bool(given("drafter")),
                                  method_given=bool(given("method")))
    return engine.validate(), spec, cluster.validate()


def sampling_from_args(args: argparse.Namespace, overrides: dict | None = None) -> SamplingParams:
    values = dict(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        stop=tuple(args.stop),
        repetition_penalty=args.repetition_penalty,
        logprobs=args.logprobs,
    )
    for key, value in (overrides or {}).items():
        if key not in values:
            raise InvalidRequestError(key, f"unknown sampling key; known: {', '.join(values)}")
        values[key] = value
    return SamplingParams(**values).validate()


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidRequestError("input", f"cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidRequestError("input", f"{path!r} is not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError("input", f"line {number} is not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict) or ("prompt" in row) == ("messages" in row):
            raise InvalidRequestError("input", f"line {number} needs a \"prompt\" or a \"messages\" key (one)")
        rows.append(row)
    return rows


def cmd_generate(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.input is None):
        raise InvalidRequestError("prompt", "give a prompt or --input FILE (not both)")
    if args.input and not args.output:
        raise InvalidRequestError("output", "--input needs --output FILE")
    if args.output:
        _check_writable(args.output)
    engine_config, spec, cluster = resolve_config(args)
    sampling = sampling_from_args(args)
    spec.validate(engine_config.max_spec_nodes)
    if spec.mode.diffusion_target:
        from mirrorspec.cli.generate_diffusion import cmd_generate_diffusion

        return cmd_generate_diffusion(args, engine_config)
    engine_config = _with_drafter(engine_config, spec)
    from mirrorspec.cluster.launch import open_engine

    engine = open_engine(engine_config, spec, cluster, on_ray=cluster.uses_ray(spec.method))
    try:
        return _generate(engine, args, sampling, spec)
    finally:
        engine.shutdown()


def _with_drafter(engine_config, spec: SpecParams):
    """The engine config with the drafter the method needs, refused before any model loads or Ray actor starts."""
    if spec.mode.drafter == AR_DRAFTER and not engine_config.drafter:
        raise InvalidRequestError("drafter", f"method {spec.method!r} needs a drafter model; none is configured: "
                                             f"--drafter default (the shipped one), a folder, or engine.drafter")
    if spec.mode.drafter == DIFFUSION_DRAFTER:
        from mirrorspec.orchestration.factory import resolve_drafter

        return dataclasses.replace(engine_config, drafter=resolve_drafter(engine_config, spec.method))
    return engine_config


def cmd_chat(args: argparse.Namespace) -> int:
    from mirrorspec.cli.chat import Conversation, run_chat
    from mirrorspec.cluster.launch import open_engine

    engine_config, spec, cluster = resolve_config(args)
    sampling = sampling_from_args(args)
    spec.validate(engine_config.max_spec_nodes)
    if spec.mode.diffusion_target:
        raise InvalidRequestError("method", "chat runs the engine's methods; a diffusion LM answers with generate")
    engine_config = _with_drafter(engine_config, spec)
    engine = open_engine(engine_config, spec, cluster, on_ray=cluster.uses_ray(spec.method))
    try:
        return run_chat(Conversation(engine, sampling, spec, args.system), sys.stdin, sys.stdout, sys.stderr)
    finally:
        engine.shutdown()


def cmd_cluster(args: argparse.Namespace) -> int:
    from mirrorspec.cluster import local_cluster

    if args.action == "up":
        record = local_cluster.up(args.num_cpus)
        print(local_cluster.exports(record))  # stdout: for `eval "$(mirrorspec cluster up)"`
        print(f"Ray cluster up (pid {record['pid']}): jobs at {record['address']}, GCS at {record['gcs']}; "
              f"`mirrorspec cluster down` stops it", file=sys.stderr)
        return 0
    record = local_cluster.down()
    print(f"stopped the Ray cluster (pid {record['pid']})" if record else "no cluster of this project is up",
          file=sys.stderr)
    return 0


def _check_writable(path: str) -> None:
    """Refuse an output file that cannot be written before generating anything for it."""
    target = Path(path)
    if target.is_dir():
        raise InvalidRequestError("output", f"{path!r} is a directory")
    if not target.parent.is_dir():  # a bare file name's parent is "."
        raise InvalidRequestError("output", f"the folder of {path!r} does not exist")
    if not os.access(target if target.exists() else target.parent, os.W_OK):
        raise InvalidRequestError("output", f"{path!r} is not writable")


def _generate(engine, args: argparse.Namespace, sampling: SamplingParams, spec: SpecParams) -> int:
    if args.input:
        return _generate_file(engine, args, spec)
    streaming = args.stream and not args.json
    out = None
    for out in engine.stream(args.prompt, sampling, spec, chat=args.chat):
        if streaming:
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
    if args.json:
        print(json.dumps({"method": spec.method, **out.to_dict()}, ensure_ascii=False))
        return 0
    print("" if streaming else out.text)
    print(f"[{spec.method}] {out.stats.summary()}", file=sys.stderr)
    return 0


def _generate_file(engine, args: argparse.Namespace, spec: SpecParams) -> int:
    from tqdm import tqdm

    rows = _read_jsonl(args.input)
    prompts, params, errors = [], [], {}
    for i, row in enumerate(rows):
        overrides = {k: v for k, v in row.items() if k not in ("prompt", "messages", "id")}
        try:
            params.append(sampling_from_args(args, overrides))
        except (InvalidRequestError, TypeError) as exc:
            errors[i] = str(exc)
            params.append(None)
        prompts.append(row["prompt"] if "prompt" in row else row["messages"])
    outputs: list = [None] * len(rows)
    todo = [i for i in range(len(rows)) if i not in errors]
    with tqdm(total=len(rows), desc=f"generate [{spec.method}]", unit="prompt", file=sys.stderr) as bar:
        bar.update(len(errors))
        # Chunks keep the progress bar moving; each chunk is batched (continuous batching inside the engine).
        for start in range(0, len(todo), 64):
            chunk = todo[start : start + 64]
            outs = engine.generate([prompts[i] for i in chunk], [params[i] for i in chunk], spec, chat=args.chat)
            for i, out in zip(chunk, outs):
                if out.error is not None:
                    errors[i] = out.error
                else:
                    outputs[i] = out
            bar.update(len(chunk))
    with open(args.output, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            record = {"id": row.get("id", i)}
            if i in errors:
                record["error"] = errors[i]
            else:
                record.update(outputs[i].to_dict())
                record.pop("request_id")
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    for i, message in sorted(errors.items()):
        print(f"row {i}: {message}", file=sys.stderr)
    print(f"wrote {len(rows)} rows to {args.output} ({len(errors)} errors)", file=sys.stderr)
    return EXIT_BAD_INPUT if errors else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser({a for a in argv if a in SUBCOMMANDS}).parse_args(argv)
    # transformers imports deepspeed, which warns about accelerator detection unless told; keep CUDA machines as is.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "chat":
            return cmd_chat(args)
        if args.command == "cluster":
            return cmd_cluster(args)
        if args.command == "train-drafter":
            from mirrorspec.training.train_drafter import cmd_train_drafter

            return cmd_train_drafter(args)
        if args.command == "bench-diffusion":
            from mirrorspec.bench.diffusion_bench import cmd_bench_diffusion

            return cmd_bench_diffusion(args)
        if args.command == "scale":
            from mirrorspec.cluster.serve import scale_server

            return scale_server(args.server, args.replicas, token_env=args.token_env, tls_ca=args.tls_ca)
        if args.command == "serve":
            from mirrorspec.cluster.config import ProjectConfig, find_config, load_config
            from mirrorspec.cluster.serve import run_server

            engine_config, spec, cluster = resolve_config(args)
            serve_config = load_config(find_config(args.config)).serve
            return run_server(ProjectConfig(engine_config, spec, cluster, serve_config), host=args.host,
                              port=args.port, http_port=args.http_port)
        if args.command == "train-dllm":
            from mirrorspec.training.dllm import cmd_train_dllm

            return cmd_train_dllm(args)
        if args.command == "write-ngram-corpus":
            from mirrorspec.training.ngram_corpus_file import cmd_write_corpus

            return cmd_write_corpus(args)
        if args.command == "train-exit-head":
            from mirrorspec.training.train_exit_head import cmd_train_exit_head

            return cmd_train_exit_head(args)
        engine_config, spec, cluster = resolve_config(args)
        if args.command == "serve-drafter":
            from mirrorspec.cluster.launch import serve_drafter

            port = cluster.drafter_port if args.port is None else args.port
            return serve_drafter(engine_config, cluster, host=args.host, port=port)
        from mirrorspec.bench.harness import cmd_bench

        return cmd_bench(args, engine_config, spec, cluster)
    except InvalidRequestError as exc:
        print(f"mirrorspec: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
