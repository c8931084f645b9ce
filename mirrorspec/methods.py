"""The decoding methods, as one table: what each needs is read here, not from its name in many files.

A request names its method by string (CLI, config, wire); `method(name)` turns the string into its `Method` once,
at validation, and everything after reads the Method's fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirrorspec.errors import InvalidRequestError

# What kind of drafter a method drafts with.
AR_DRAFTER = "ar"  # an autoregressive model (a trained drafter, any HF causal LM sharing the tokenizer, `self`)
DIFFUSION_DRAFTER = "diffusion"  # a block-diffusion drafter (train-dllm --from-drafter)
NGRAM_DRAFTER = "ngram"  # no model: continuations of the text itself (orchestration/ngram_draft.py), always there


@dataclass(frozen=True)
class Method:
    name: str
    draft: str  # the shape of each step's draft: "none", "chain" (gamma tokens) or "tree"
    drafter: str | None  # AR_DRAFTER, DIFFUSION_DRAFTER, or None (no drafter)
    early_exit: bool = False  # the target's early exit feeds the drafter while the upper layers run (Mirror-SD)
    ray_by_default: bool = False  # `cluster.ray: auto` runs it as Ray actors (target and drafter on their devices)
    diffusion_target: bool = False  # decodes a masked-diffusion target, outside the speculative Engine


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ar", draft="none", drafter=None),
    Method("chain", draft="chain", drafter=AR_DRAFTER),
    Method("tree", draft="tree", drafter=AR_DRAFTER),
    Method("mirror", draft="chain", drafter=AR_DRAFTER, early_exit=True, ray_by_default=True),
    Method("diffusion-draft", draft="tree", drafter=DIFFUSION_DRAFTER),
    Method("ngram", draft="tree", drafter=NGRAM_DRAFTER),
    Method("diffusion", draft="none", drafter=None, diffusion_target=True),
)}
# What the speculative Engine runs (an autoregressive target, with or without a drafter).
ENGINE_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if not m.diffusion_target)


def method(name: str) -> Method:
    """The Method called `name`; InvalidRequestError naming `method` for anything else."""
    found = METHODS.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidRequestError("method", f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return found


def drafted_by(drafter_kind: str | None) -> tuple[str, ...]:
    """The Engine's methods with a drafter model of this kind (None: no drafter model), `ar` first; the
    model-free ones run on every engine."""
    kinds = {None, NGRAM_DRAFTER, drafter_kind}
    return ("ar", *(name for name in ENGINE_METHODS if name != "ar" and METHODS[name].drafter in kinds))
