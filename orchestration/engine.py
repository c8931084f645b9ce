"""The Engine facade: validate requests, run the continuous-batching loop, hand back outputs (models are loaded
by orchestration/factory.py: `build_engine`)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence as Seq
from dataclasses import dataclass

from mirrorspec.errors import InvalidRequestError
from mirrorspec.methods import AR_DRAFTER, DIFFUSION_DRAFTER, NGRAM_DRAFTER
from mirrorspec.orchestration.drafter_session import as_draft_service
from mirrorspec.orchestration.interfaces import DraftService
from mirrorspec.orchestration.ngram_corpus import CorpusIndex
from mirrorspec.orchestration.ngram_draft import NgramDraftService
from mirrorspec.orchestration.outputs import RequestOutput, error_output
from mirrorspec.orchestration.prompts import Prompt, encode_prompt
from mirrorspec.orchestration.sampling import seeded_generator
from mirrorspec.orchestration.scheduler import Scheduler
from mirrorspec.orchestration.sequence import Sequence, TextTracker
from mirrorspec.orchestration.stats import RequestStats
from mirrorspec.orchestration.step_cost import MEASURE, StepCost, parse_step_cost
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.workers.interface import Worker

SELF_DRAFTER = "self"


@dataclass
class EngineConfig:
    target: str = "default"  # a local HF folder, or "default" (the embedded SmolLM2-135M-Instruct)
    # The built-in defaults are ray_config.yaml's (tests/test_cli.py checks it), so that any directory runs the same.
    drafter: str | None = "default"  # a local HF folder, "default" (the shipped one, for the default target), "self"
    # (the target drafts for itself), or None
    dtype: str = "auto"  # bfloat16 where the device has native bf16 (workers/models.py has_native_bf16), else float32
    device: str = "cpu"
    drafter_device: str | None = None  # defaults to `device`
    exit_head: str | None = "default"  # mirror's early-exit head: a folder from train-exit-head, "default", or None
    max_batch: int = 8
    max_model_len: int = 2048
    max_spec_nodes: int = 64
    threads: int | None = None
    seed: int = 0
    cpu_linear: str = "auto"  # auto | on | off: the few-row fp32 CPU matmul layout (workers/cpu_linear.py)
    # The target computes every token's logits to the same bits decoded alone, in a draft or in a batch
    # (workers/exact_linear.py, workers/exact_attention.py): outputs identical to `ar` at any dtype. Off, the
    # fastest kernels run and at half precision outputs may differ from `ar` where two tokens nearly tie.
    exact: bool = True
    # The target's forward cost by token count, which sizes each step's verified draft to the load
    # (orchestration/spec_budget.py): auto (measured before the first drafting step), off (verify every draft
    # whole), or a table {tokens: relative cost}.
    step_cost: str | dict = MEASURE
    # What `ngram` drafts and ngram branches also copy from besides each sequence's own text
    # (orchestration/ngram_corpus.py): "default" (the default target's own answers, shipped in drafters/; no corpus
    # for other targets), a JSONL file of {"text": ...} rows (optionally .gz), or None.
    ngram_corpus: str | None = "default"

    def validate(self) -> "EngineConfig":
        for name in ("max_batch", "max_model_len", "max_spec_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidRequestError(name, f"must be an integer >= 1, got {value!r}")
        if self.cpu_linear not in ("auto", "on", "off"):
            raise InvalidRequestError("cpu_linear", f"must be auto, on or off, got {self.cpu_linear!r}")
        if not isinstance(self.exact, bool):
            raise InvalidRequestError("exact", f"must be true or false, got {self.exact!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InvalidRequestError("threads", f"must be an integer >= 1, got {self.threads!r}")
        parse_step_cost(self.step_cost)
        if self.ngram_corpus is not None and not isinstance(self.ngram_corpus, str):
            raise InvalidRequestError("ngram_corpus", f"must be a file path, 'default' or null, got {self.ngram_corpus!r}")
        return self


class Engine:
    def __init__(
        self,
        target: Worker,
        drafter: Worker | DraftService | None = None,
        *,
        tokenizer=None,
        eos_ids: Seq[int] = (),
        max_model_len: int = 2048,
        max_batch: int = 8,
        max_spec_nodes: int = 64,
        seed: int = 0,
        branch_budget: int = 8,
        step_cost: StepCost | Callable[[], StepCost] | None = None,
        ngram_corpus: CorpusIndex | None = None,
    ) -> None:
        """`drafter`: a DraftService, or a drafter model's Worker (run here, inside a DrafterSession).
        `step_cost`: the target's cost curve for the adaptive budget, a probe that measures it when first needed,
        or None to verify every draft whole (the default here; `build_engine` follows engine.step_cost).
        `ngram_corpus`: what `ngram` drafts and ngram branches also copy from, besides each sequence's own text."""
        self.target = target
        self.drafter: DraftService | None = None if drafter is None else as_draft_service(
            drafter, max_spec_nodes=max_spec_nodes, branch_budget=branch_budget)
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.max_model_len = max_model_len
        self.max_spec_nodes = max_spec_nodes
        decode = None if tokenizer is None else (lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        # Model-free: on every engine.
        drafters: dict[str, DraftService] = {NGRAM_DRAFTER: NgramDraftService(ngram_corpus)}
        if self.drafter is not None:
            drafters[DIFFUSION_DRAFTER if self.drafter.drafts_by_diffusion else AR_DRAFTER] = self.drafter
        self.scheduler = Scheduler(target, drafters, max_batch=max_batch, text=TextTracker(decode, self.eos_ids),
                                   step_cost=step_cost, max_spec_nodes=max_spec_nodes, ngram_corpus=ngram_corpus)
        self._seq_ids = itertools.count()
        self._seed_source = random.Random(seed)
        self._sequences: dict[str, Sequence] = {}

    # --------------------------------------------------------------------------------- requests
    def encode(self, prompt: Prompt, chat: bool | None = None) -> list[int]:
        return encode_prompt(self.tokenizer, self.target.vocab_size, prompt, chat)

    def add_request(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        spec: SpecParams | None = None,
        *,
        chat: bool | None = None,
        request_id: str | None = None,
    ) -> str:
        """Validate and queue a request; raises InvalidRequestError (naming the field) without side effects."""
        sampling = (sampling or SamplingParams()).validate()
        spec = (spec or SpecParams(method="ar")).validate(self.max_spec_nodes)
        self._check_method(spec)
        if sampling.stop and self.tokenizer is None:
            raise InvalidRequestError("stop", "stop strings need a tokenizer")
        prompt_ids = self.encode(prompt, chat)
        if len(prompt_ids) >= self.max_model_len:
            raise InvalidRequestError(
                "prompt", f"has {len(prompt_ids)} tokens; the context holds {self.max_model_len}"
            )
        room = self.max_model_len - len(prompt_ids)
        if sampling.max_new_tokens > room:
            raise InvalidRequestError(
                "max_new_tokens",
                f"{sampling.max_new_tokens} is past the context: a {len(prompt_ids)}-token prompt leaves room for {room}",
            )
        seq_id = next(self._seq_ids)
        request_id = request_id if request_id is not None else f"req-{seq_id}"
        if request_id in self._sequences:
            raise InvalidRequestError("request_id", f"{request_id!r} is already in flight")
        seed = sampling.seed if sampling.seed is not None else self._seed_source.getrandbits(62)
        seq = Sequence(
            seq_id=seq_id,
            request_id=request_id,
            prompt_ids=prompt_ids,
            sampling=sampling,
            spec=spec,
            generator=seeded_generator(seed),
            stats=RequestStats(),
            seed=None if sampling.greedy else seed,
        )
        self._sequences[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def _check_method(self, spec: SpecParams) -> None:
        """The method runs on this engine: a speculative method needs a drafter of its kind."""
        mode = spec.mode
        if mode.diffusion_target:
            raise InvalidRequestError("method", f"{mode.name} decodes a masked-diffusion target (mirrorspec generate "
                                                f"--method diffusion --target DLLM_DIR); this engine's target is "
                                                f"autoregressive")
        if mode.drafter in (None, NGRAM_DRAFTER):
            return
        if self.drafter is None:
            raise InvalidRequestError("drafter", f"method {mode.name!r} needs a drafter model; none is loaded")
        if mode.drafter == DIFFUSION_DRAFTER and not self.drafter.drafts_by_diffusion:
            raise InvalidRequestError("method", f"{mode.name} needs a block-diffusion drafter (a folder from "
                                                "train-dllm --from-drafter); the loaded drafter is autoregressive")
        if mode.drafter == AR_DRAFTER and self.drafter.drafts_by_diffusion:
            raise InvalidRequestError("method", f"{mode.name} needs an autoregressive drafter; the loaded drafter "
                                                f"is a block-diffusion drafter: use diffusion-draft")
        if mode.early_exit and spec.exit_layer is not None and spec.exit_layer >= self.target.num_layers:
            raise InvalidRequestError("exit_layer", f"must be below the target's {self.target.num_layers} layers, "
                                                    f"got {spec.exit_layer}")

    def abort(self, request_id: str, reason: str = "abort") -> RequestOutput | None:
        """Stop a request now and free its slot; returns its last output (what it generated, finish `reason`),
        or None if it is not in flight."""
        seq = self.scheduler.abort(request_id)
        if seq is None:
            return None
        self._sequences.pop(request_id, None)
        seq.finish_reason = reason
        return self._output(seq)

    def shutdown(self) -> None:
        """Nothing to free in process (GenerationBackend's call: a pipeline frees its actors there)."""

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        outputs = [self._output(seq) for seq in self.scheduler.step()]
        for out in outputs:
            if out.finished:
                self._sequences.pop(out.request_id, None)
        return outputs

    # ------------------------------------------------------------------------------ conveniences
    def generate(
        self,
        prompts: Seq[Prompt],
        sampling: SamplingParams | Seq[SamplingParams] | None = None,
        spec: SpecParams | None = None,
        *,
        chat: bool | None = None,
    ) -> list[RequestOutput]:
        """Generate for many prompts, batched. A bad prompt gets an output with `error`; the others still run."""
        per_prompt = sampling if isinstance(sampling, (list, tuple)) else [sampling] * len(prompts)
        results: dict[int, RequestOutput] = {}
        pending: dict[str, int] = {}
        for index, (prompt, params) in enumerate(zip(prompts, per_prompt)):
            try:
                pending[self.add_request(prompt, params, spec, chat=chat)] = index
            except InvalidRequestError as exc:
                results[index] = error_output(f"invalid-{index}", exc)
        while pending:
            for out in self.step():
                if out.finished and out.request_id in pending:
                    results[pending.pop(out.request_id)] = out
        return [results[i] for i in range(len(prompts))]

    def stream(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        spec: SpecParams | None = None,
        *,
        chat: bool | None = None,
    ) -> Iterator[RequestOutput]:
        """Yield this request's committed tokens as they are accepted (other queued requests progress too)."""
        request_id = self.add_request(prompt, sampling, spec, chat=chat)
        try:
            while True:
                for out in self.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            if request_id in self._sequences:
                self.abort(request_id)

    # --------------------------------------------------------------------------------- internals
    @staticmethod
    def _output(seq: Sequence) -> RequestOutput:
        new_ids = seq.output_ids[seq.emitted_tokens :]
        seq.emitted_tokens = len(seq.output_ids)
        # Hold back a trailing partial UTF-8 character until the next token completes it.
        visible = len(seq.text) if seq.finished else len(seq.text.rstrip("\ufffd"))
        new_text = seq.text[seq.emitted_text : visible]
        seq.emitted_text = max(seq.emitted_text, visible)
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_ids,
            text=seq.text,
            token_ids=list(seq.output_ids),
            finished=seq.finished,
            finish_reason=seq.finish_reason,
            stats=seq.stats,
            new_text=new_text,
            new_token_ids=new_ids,
            error=seq.error,
            seed=seq.seed,
            stop_sequence=seq.stop_sequence,
            logprobs=None if seq.sampling.logprobs is None else list(seq.logprobs),
            prompt_logprobs=seq.prompt_logprobs,
        )
