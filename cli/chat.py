"""`mirrorspec chat`: a multi-turn conversation in the terminal. Answers stream as the target accepts them; the
whole conversation (an optional system message and every turn) is the next prompt, through the chat template.

Commands at the prompt: /stats (the last answer's speculation stats), /reset (forget the conversation), /exit.
"""

from __future__ import annotations

from typing import TextIO

from mirrorspec.errors import InvalidRequestError
from mirrorspec.params import SamplingParams, SpecParams

HELP = "commands: /stats (speculation stats of the last answer), /reset (a new conversation), /exit"


class Conversation:
    """The turns so far, and the engine that answers them."""

    def __init__(self, engine, sampling: SamplingParams, spec: SpecParams, system: str | None) -> None:
        self.engine, self.sampling, self.spec, self.system = engine, sampling, spec, system
        self.messages: list[dict[str, str]] = []
        self.last = None
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.last = None

    def answer(self, text: str, out: TextIO) -> None:
        """Stream the answer to `text` to `out`; the turn joins the conversation only once it is whole."""
        turns = [*self.messages, {"role": "user", "content": text}]
        final = None
        for final in self.engine.stream(turns, self.sampling, self.spec, chat=True):
            out.write(final.new_text)
            out.flush()
        out.write("\n")
        self.messages = [*turns, {"role": "assistant", "content": final.text}]
        self.last = final


def run_chat(conversation: Conversation, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    interactive = stdin.isatty()
    if interactive:
        print(HELP, file=err)
    while True:
        if interactive:
            err.write("> ")
            err.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            conversation.reset()
        elif text == "/stats":
            stats = conversation.last.stats.summary() if conversation.last else "no answer yet"
            print(f"[{conversation.spec.method}] {stats}", file=err)
        elif text.startswith("/"):
            print(f"unknown command {text.split()[0]!r}; {HELP}", file=err)
        else:
            try:
                conversation.answer(text, out)
            except InvalidRequestError as exc:  # e.g. the conversation outgrew the context: say so, keep going
                print(f"error: {exc} (/reset starts a new conversation)", file=err)
