"""What the Engine hands back for a request: its text and tokens so far, the new part, and its statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

from mirrorspec.errors import InvalidRequestError
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

    def to_dict(self) -> dict:
        return {
            "request_id": self.request_id,
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "stats": self.stats.as_dict(),
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
