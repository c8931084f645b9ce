"""Per-request speculation and latency statistics (vLLM's definitions where they exist)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class RequestStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    target_forwards: int = 0  # decoding steps of this request (each is one target forward)
    drafts: int = 0  # steps that verified a non-empty draft
    drafted: int = 0  # draft tokens (tree nodes) verified
    accepted: int = 0  # draft tokens accepted
    predicted_accepted: float = 0.0  # the adaptive budget's estimate of `accepted` (its calibration)
    unverified: int = 0  # draft tokens the adaptive budget left out (not counted in `drafted`)
    accepted_per_position: list[int] = field(default_factory=list)  # accepted tokens at draft depth 1, 2, ...
    fallback_steps: int = 0  # steps decoded without a draft because the drafter failed
    late_drafts: int = 0  # steps decoded without a draft because the drafter was slower than the target's patience
    reused_windows: int = 0  # mirror: drafts taken from a branch rolled out during the previous step
    exit_checked: int = 0  # mirror: steps whose correction position had early-exit candidates
    exit_covered: int = 0  # ... and whose committed token there was among them (Mirror-SD App. E coverage)
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None

    def record_step(self, drafted: int, accepted: int, predicted: float) -> None:
        self.target_forwards += 1
        if drafted:
            self.drafts += 1
            self.drafted += drafted
            self.accepted += accepted
            self.predicted_accepted += predicted
            if len(self.accepted_per_position) < accepted:
                self.accepted_per_position += [0] * (accepted - len(self.accepted_per_position))
            for position in range(accepted):
                self.accepted_per_position[position] += 1

    @property
    def tau(self) -> float:
        """Mean tokens committed per target forward, bonus/correction token included (ar: 1.0)."""
        return self.generated_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def acceptance_length(self) -> float:
        """vLLM's mean acceptance length: 1 + accepted draft tokens per drafting step (a tree's accepted path)."""
        return 1 + self.accepted / self.drafts if self.drafts else 1.0

    @property
    def acceptance_by_position(self) -> list[float]:
        return [n / self.drafts for n in self.accepted_per_position] if self.drafts else []

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        if self.finish_time is None or self.first_token_time is None or self.generated_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.generated_tokens - 1)

    @property
    def tokens_per_second(self) -> float | None:
        if self.finish_time is None or self.finish_time <= self.arrival_time:
            return None
        return self.generated_tokens / (self.finish_time - self.arrival_time)

    def as_dict(self) -> dict:
        def r(x, n=4):
            return None if x is None else round(x, n)

        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "target_forwards": self.target_forwards,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "predicted_accepted": r(self.predicted_accepted, 2),
            "unverified": self.unverified,
            "tau": r(self.tau),
            "acceptance_rate": r(self.acceptance_rate),
            "acceptance_length": r(self.acceptance_length),
            "acceptance_by_position": [r(x) for x in self.acceptance_by_position],
            "fallback_steps": self.fallback_steps,
            "late_drafts": self.late_drafts,
            "reused_windows": self.reused_windows,
            "exit_coverage": r(self.exit_covered / self.exit_checked) if self.exit_checked else None,
            "ttft_s": r(self.ttft),
            "tpot_s": r(self.tpot),
            "tokens_per_s": r(self.tokens_per_second, 2),
        }

    def summary(self) -> str:
        parts = [f"{self.generated_tokens} tokens", f"tau {self.tau:.2f}"]
        if self.drafts:  # a tree's drafted nodes are many more than its accepted path: both are said
            parts.append(f"acceptance length {self.acceptance_length:.2f} "
                         f"({self.accepted}/{self.drafted} drafted tokens accepted)")
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:.1f} tok/s")
        if self.ttft is not None:
            parts.append(f"TTFT {self.ttft * 1000:.0f} ms")
        if self.tpot is not None:
            parts.append(f"TPOT {self.tpot * 1000:.0f} ms")
        if self.exit_checked:
            parts.append(f"{self.reused_windows}/{self.drafts} windows reused, "
                         f"early-exit coverage {self.exit_covered / self.exit_checked:.2f}")
        if self.fallback_steps:
            parts.append(f"{self.fallback_steps} fallback steps")
        if self.late_drafts:
            parts.append(f"{self.late_drafts} drafts too late")
        return ", ".join(parts)


@dataclass
class StepTiming:
    """Wall-clock accounting of the step loop, summed over steps: the terms of Mirror-SD's latency model
    (arXiv 2510.13161 Eq. 10: lower layers + max(upper layers, draft) + exchanges)."""

    steps: int = 0
    exit_steps: int = 0  # steps with an early exit
    target_s: float = 0.0  # target forwards of decoding steps
    lower_s: float = 0.0  # ... exit steps: from the forward's start to the early exit
    exit_s: float = 0.0  # ... exit steps: computing and sending the early exit
    upper_s: float = 0.0  # ... exit steps: after the early exit to the forward's end
    propose_s: float = 0.0  # waiting for drafts

    def read(self) -> dict:
        """The sums so far, then zero."""
        out = asdict(self)
        for name in out:
            setattr(self, name, type(out[name])())
        return out
