"""Per-request parameters: sampling, stopping, speculation and diffusion decoding, validated with errors that name
the field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mirrorspec.errors import InvalidRequestError
from mirrorspec.methods import Method, method


GREEDY_BELOW = 1e-5  # temperatures under this decode greedily (see SamplingParams)
MAX_TOP_LOGPROBS = 20  # candidates per position (OpenAI's top_logprobs limit)
MAX_PENALTY = 10.0


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen and when generation stops. temperature 0 means greedy, and so does any temperature
    below GREEDY_BELOW: dividing logits by less overflows float32 into NaN, and the limit of sampling as the
    temperature falls is greedy decoding anyway (vLLM draws the same line)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # EOS cannot be chosen before this many new tokens (stop strings still apply)
    stop: tuple[str, ...] = field(default_factory=tuple)
    include_stop: bool = False  # the text keeps the stop string that ended it
    ignore_eos: bool = False
    # Penalties: deterministic transforms of the target's logits given each position's context
    # (orchestration/logits_processing.py), so that speculation keeps them exact.
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already in the prompt or output (CTRL)
    length_penalty: tuple[int, float] | None = None  # (start_index, decay_factor): EOS grows likelier after start
    logprobs: int | None = None  # None = off; n >= 0: each new token's logprob and rank, and the n most likely
    prompt_logprobs: int | None = None  # the same for each prompt token after the first (vLLM's name)

    def __post_init__(self) -> None:
        # One string is one stop string (not one per character); a list holds several.
        if isinstance(self.stop, (str, list)):
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def validate(self) -> "SamplingParams":
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequestError("temperature", f"must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidRequestError("top_k", f"must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise InvalidRequestError("max_new_tokens", f"must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.min_new_tokens, int) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InvalidRequestError("min_new_tokens", f"must be an integer in [0, max_new_tokens="
                                                        f"{self.max_new_tokens}], got {self.min_new_tokens!r}")
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < 2**64):
            raise InvalidRequestError("seed", f"must be an integer in [0, 2^64), got {self.seed!r}")
        if not isinstance(self.stop, tuple) or any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidRequestError("stop", "must be a non-empty string or a list of them")
        self._validate_penalties()
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_TOP_LOGPROBS):
                raise InvalidRequestError(name, f"must be an integer in [0, {MAX_TOP_LOGPROBS}], got {value!r}")
        return self

    def _validate_penalties(self) -> None:
        penalty = self.repetition_penalty
        if not isinstance(penalty, (int, float)) or not math.isfinite(penalty) or not 0 < penalty <= MAX_PENALTY:
            raise InvalidRequestError("repetition_penalty", f"must be in (0, {MAX_PENALTY}] (1 = off), got {penalty!r}")
        if self.length_penalty is not None:
            start, decay = self.length_penalty
            if type(start) is not int or start < 0:
                raise InvalidRequestError("length_penalty.start_index", f"must be an integer >= 0, got {start!r}")
            if not isinstance(decay, (int, float)) or not 1.0 <= decay <= MAX_PENALTY:
                raise InvalidRequestError("length_penalty.decay_factor", f"must be in [1, {MAX_PENALTY}], got {decay!r}")


@dataclass(frozen=True)
class SpecParams:
    """Which decoding method and the shape of each step's draft.

    `chain` drafts gamma tokens; `tree` expands top-`tree_topk` children per node for `tree_depth` levels and
    keeps the `tree_nodes` most likely nodes (EAGLE-2-style dynamic tree). A chain is a tree with one child per node.
    `mirror` verifies gamma-token windows like `chain`, and the target's early exit after `exit_layer` layers
    (default: half of them) sends its top-`kappa` candidates per position to the drafter, which rolls out the
    next window for the likely outcomes while the target finishes (Mirror-SD).
    `diffusion-draft` has the shape of `tree`, drafted in one forward of a block-diffusion drafter (depth at most
    the drafter's window; a deeper tree is cut to it).
    These shapes are the most a step drafts: with `adaptive` on, each step verifies only the part of the draft
    that pays at the engine's current load (orchestration/spec_budget.py); off, every draft is verified whole.
    With `ngram_branches`, a `chain` or `tree` draft of deterministic nodes (greedy requests, and trees) also
    carries what `ngram` would draft (continuations copied from the text so far, in the same shape), merged into
    one tree, so that a copied span and the drafter's prediction are verified in one forward.
    With `use_corpus`, `ngram` drafts and ngram branches also copy from the engine's corpus (engine.ngram_corpus:
    what followed the same last tokens in the target's earlier answers), after the text's own continuations.
    Unset (None), `ngram` copies from it and the branches of a model draft do not (`copies_corpus`).
    """

    method: str = "tree"
    gamma: int = 5
    tree_depth: int = 5
    tree_topk: int = 4
    tree_nodes: int = 24
    exit_layer: int | None = None
    kappa: int = 8
    adaptive: bool = True
    ngram_branches: bool = True
    use_corpus: bool | None = None

    @property
    def copies_corpus(self) -> bool:
        """Whether this request's drafts copy from the engine's corpus. By default only `ngram`'s: merged into a
        model draft as branches, corpus continuations never made `chain` faster in six runs (level in two, 2% to
        11% slower in four: README "The bank + Magpie drafter at batch 8"), where `ngram` gains about a fifth
        with them (bench/results/issue17-ngram-corpus-b1.json)."""
        return self.method == "ngram" if self.use_corpus is None else self.use_corpus

    @property
    def mode(self) -> Method:
        """The method's entry in the methods table (what it drafts with, its draft shape, early exit)."""
        return method(self.method)

    def validate(self, max_spec_nodes: int) -> "SpecParams":
        mode = self.mode
        for name in ("gamma", "tree_depth", "tree_topk", "tree_nodes", "kappa"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidRequestError(name, f"must be an integer >= 1, got {value!r}")
        depth, topk, nodes = self.shape()
        widest = "tree_topk" if topk > depth else "tree_depth"  # the larger factor of depth x topk
        for name, size in (("tree_nodes", nodes), (widest, depth * topk)):
            if size >= max_spec_nodes:
                name = "gamma" if mode.draft == "chain" else name
                raise InvalidRequestError(name, f"a draft of this size exceeds the engine's max_spec_nodes="
                                                f"{max_spec_nodes}")
        for name in ("adaptive", "ngram_branches", "use_corpus"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "use_corpus" and value is None):
                raise InvalidRequestError(name, f"must be true or false, got {value!r}")
        if self.exit_layer is not None and (not isinstance(self.exit_layer, int) or self.exit_layer < 1):
            raise InvalidRequestError("exit_layer", f"must be an integer >= 1, got {self.exit_layer!r}")
        if mode.draft == "tree" and self.tree_nodes < self.tree_depth:
            raise InvalidRequestError("tree_nodes", f"must be >= tree_depth ({self.tree_depth}), got {self.tree_nodes}")
        return self

    def shape(self) -> tuple[int, int, int]:
        """(depth, children kept per level, node budget) of each step's draft; depth 0 = no draft."""
        draft = self.mode.draft
        if draft == "none":
            return 0, 1, 0
        if draft == "chain":
            return self.gamma, 1, self.gamma
        return self.tree_depth, self.tree_topk, self.tree_nodes


# ---------------------------------------------------------------------- diffusion decoding (method `diffusion`)
STRATEGIES = ("low-confidence", "random", "threshold", "factor")
FIXED_SCHEDULE = ("low-confidence", "random")  # a fixed number of commits per step
CACHES = ("none", "prefix", "dual")


@dataclass(frozen=True)
class DiffusionParams:
    strategy: str = "threshold"
    gen_length: int = 64  # masked positions after the prompt (the most this request generates)
    block_length: int = 32
    steps: int | None = None  # low-confidence / random: denoising steps in all (default: one token per step)
    threshold: float = 0.9
    factor: float = 1.0
    temperature: float = 0.0  # > 0: Gumbel-max sampling of each position's token (float64, as LLaDA)
    adaptive_blocks: bool = False
    delimiter_confidence: float = 0.3
    early_commit: bool = False
    stop_at_eos: bool = True
    cache: str = "none"  # none | prefix | dual (Fast-dLLM's approximate KV caches)
    seed: int = 0

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.gen_length

    def validate(self) -> "DiffusionParams":
        if self.strategy not in STRATEGIES:
            raise InvalidRequestError("strategy", f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.cache not in CACHES:
            raise InvalidRequestError("cache", f"unknown cache {self.cache!r}; use one of {', '.join(CACHES)}")
        for name in ("gen_length", "block_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidRequestError(name, f"must be an integer >= 1, got {getattr(self, name)!r}")
        if self.gen_length % self.block_length:
            raise InvalidRequestError("block_length", f"{self.block_length} does not divide the generation length "
                                                      f"{self.gen_length}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise InvalidRequestError("steps", f"must be an integer >= 1, got {self.steps!r}")
        if self.strategy in FIXED_SCHEDULE:
            if self.total_steps % self.num_blocks:
                raise InvalidRequestError("steps", f"{self.total_steps} steps cannot be shared equally by "
                                                   f"{self.num_blocks} blocks")
            if self.total_steps > self.gen_length:
                raise InvalidRequestError("steps", f"{self.total_steps} steps for {self.gen_length} tokens: at most "
                                                   f"one step per token")
            if self.adaptive_blocks:
                raise InvalidRequestError("adaptive_blocks", "needs a confidence rule (threshold or factor): a "
                                                             "fixed schedule has no step count for a block of "
                                                             "unknown length")
        if not 0 < self.threshold <= 1:
            raise InvalidRequestError("threshold", f"must be in (0, 1], got {self.threshold!r}")
        if self.factor <= 0:
            raise InvalidRequestError("factor", f"must be > 0, got {self.factor!r}")
        if self.temperature < 0:
            raise InvalidRequestError("temperature", f"must be >= 0, got {self.temperature!r}")
        if not 0 < self.delimiter_confidence <= 1:
            raise InvalidRequestError("delimiter_confidence", f"must be in (0, 1], got {self.delimiter_confidence!r}")
        return self
