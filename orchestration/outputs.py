"""What the Engine hands back for a request: its text and tokens so far, the new part, and its statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.logprobs import TokenLogprob
from mirrorspec.orchestration.stats import RequestStats


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    stats: RequestStats
    new_text: str = ""
    new_token_ids: list[int] = field(default_factory=list)
    error: str | None = None
    seed: int | None = None  # the random stream's seed (sampling requests)
    stop_sequence: str | None = None  # the stop string that ended it (finish_reason "stop")
    logprobs: list[TokenLogprob] | None = None  # per token of token_ids, when asked for
    prompt_logprobs: list[TokenLogprob] | None = None  # per prompt token after the first, when asked for

    @property
    def new_logprobs(self) -> list[TokenLogprob] | None:
        """The logprobs of new_token_ids."""
        return None if self.logprobs is None else self.logprobs[len(self.token_ids) - len(self.new_token_ids):]

    def to_dict(self) -> dict:
        return {
            "request_id": self.request_id,
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "stats": self.stats.as_dict(),
            # Present when there is one: a sampled request's seed, the logprobs asked for.
            **({} if self.seed is None else {"seed": self.seed}),
            **({} if self.logprobs is None else {"logprobs": [
                {"token_id": i.token_id, "logprob": i.logprob, "rank": i.rank, "top": [list(t) for t in i.top]}
                for i in self.logprobs]}),
            **({} if self.prompt_logprobs is None else {"prompt_logprobs": [
                {"token_id": i.token_id, "logprob": i.logprob, "rank": i.rank, "top": [list(t) for t in i.top]}
                for i in self.prompt_logprobs]}),
        }


def error_output(request_id: str, exc: InvalidRequestError) -> RequestOutput:
    return RequestOutput(
        request_id=request_id,
        prompt_token_ids=[],
        text="",
        token_ids=[],
        finished=True,
        finish_reason="error",
        stats=RequestStats(),
        error=str(exc),
    )
