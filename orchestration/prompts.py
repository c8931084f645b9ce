"""What a prompt may be, and its token ids.

A prompt is text, a list of token ids, or an OpenAI-style list of chat messages ({"role", "content"}: a system
message and several turns). `chat` says whether text goes through the target's chat template: None (the default)
means yes when the tokenizer has one, so an instruct model gets the turn markers it was trained on; False sends the
text as is. Messages always need the template.
"""

from __future__ import annotations

from typing import Union

from mirrorspec.errors import InvalidRequestError

Message = dict[str, str]
Prompt = Union[str, list[int], list[Message]]
ROLES = ("system", "user", "assistant")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def is_messages(prompt: object) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def check_messages(messages: list, field: str = "prompt") -> list[Message]:
    """Each message a {"role", "content"} with a known role and text; the last one the user's (the answer follows)."""
    checked = []
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if set(message) - {"role", "content"}:
            raise InvalidRequestError(where, f"unknown keys {sorted(set(message) - {'role', 'content'})}; a message "
                                             f"has a role and a content")
        if message.get("role") not in ROLES:
            raise InvalidRequestError(f"{where}.role", f"must be one of {', '.join(ROLES)}, "
                                                       f"got {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise InvalidRequestError(f"{where}.content", "must be text")
        check_unicode(message["content"], f"{where}.content")
        checked.append({"role": message["role"], "content": message["content"]})
    if not checked:
        raise InvalidRequestError(field, "has no messages")
    if checked[-1]["role"] != "user" or not checked[-1]["content"].strip():
        raise InvalidRequestError(f"{field}[{len(checked) - 1}]", "the last message must be the user's, not empty")
    return checked


def check_unicode(text: str, field: str) -> None:
    """Text a tokenizer can take: no lone surrogates (JSON's "\\ud800" or a command line's undecodable bytes
    arrive as such, and no UTF-8 holds them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(field, f"is not valid Unicode: a lone surrogate {text[exc.start]!r} at character "
                                         f"{exc.start}") from None


def encode_prompt(tokenizer, vocab_size: int, prompt: Prompt, chat: bool | None = None) -> list[int]:
    """A prompt's token ids: text through the tokenizer (and its chat template unless `chat` is False), messages
    through the chat template, or checked token ids."""
    if is_messages(prompt):
        messages = check_messages(list(prompt))
        if chat is False:
            raise InvalidRequestError("chat", "chat messages need the chat template; send text to decode it raw")
        return _apply_template(tokenizer, messages)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidRequestError("prompt", "is empty")
        if tokenizer is None:
            raise InvalidRequestError("prompt", "this model has no tokenizer; pass token ids")
        check_unicode(prompt, "prompt")
        if chat or (chat is None and has_chat_template(tokenizer)):
            return _apply_template(tokenizer, [{"role": "user", "content": prompt}])
        return tokenizer.encode(prompt)
    if not isinstance(prompt, (list, tuple)):
        raise InvalidRequestError("prompt", f"must be text, token ids or chat messages, got {type(prompt).__name__}")
    ids = list(prompt)
    if not ids:
        raise InvalidRequestError("prompt", "is empty")
    bad = next((t for t in ids if type(t) is not int or not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError("prompt", f"token id {bad!r} is outside the vocabulary [0, {vocab_size})")
    return ids


def _apply_template(tokenizer, messages: list[Message]) -> list[int]:
    if tokenizer is None or not has_chat_template(tokenizer):
        raise InvalidRequestError("chat", "the target's tokenizer has no chat template")
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def add_chat_args(group) -> None:
    """--chat / --raw on an argparse parser or group: `chat` True, False, or None (the template when the model has
    one)."""
    group.add_argument("--chat", dest="chat", action="store_const", const=True, default=None,
                       help="wrap the prompt in the target's chat template (the default when it has one)")
    group.add_argument("--raw", dest="chat", action="store_const", const=False,
                       help="send the prompt as is, without the chat template")
