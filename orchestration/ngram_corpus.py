"""A corpus that `ngram` drafts also copy from: what followed the sequence's last tokens in other texts.

A sequence's own text (orchestration/ngram_draft.py) can only repeat what it already holds; a corpus of the
target's earlier answers also knows the phrasing the target keeps using (code scaffolding, list formats, stock
sentences). Retrieval-based drafting (REST, He et al., arXiv 2311.08252) looks the context's suffix up in such a
datastore and drafts its most frequent continuations as a tree; SuffixDecoding (Oliaro et al., arXiv 2411.04975)
keeps a global tree of earlier outputs beside each request's own. Here the corpus is read-only: token sequences,
indexed once by hashes of their n-grams, sorted (numpy), so that a lookup is a binary search and millions of tokens
cost tens of megabytes rather than a Python dict entry per n-gram. A hash collision only drafts a wrong token,
which verification rejects: the output stays the target's.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.draft_tree import DraftTree
from mirrorspec.orchestration.ngram_draft import MAX_NGRAM, MIN_NGRAM, continuation_tree

logger = logging.getLogger(__name__)

SAMPLE = 64  # occurrences of the matched n-gram whose continuations are counted, spread over the corpus
# How often other texts continued a phrase overstates how often this one will: on 200 held-out Magpie answers of
# the default target (a corpus of the other answers; not the bench prompts; bench/ngram_calibration.py, results in
# bench/results/ngram-corpus-calibration.json), nodes whose frequency estimate was
# 0.25 / 0.51 / 0.66 / 0.84 were accepted 0.11 / 0.30 / 0.45 / 0.78 of the time, which estimate ** 1.7 follows
# (0.09 / 0.32 / 0.49 / 0.74); the sequence's own repeats were calibrated as they are (predicted 6,727 accepted
# nodes, 6,607 accepted). The adaptive budget ranks nodes by these estimates.
CONFIDENCE_EXPONENT = 1.7
_SEPARATOR = -1  # between the corpus's texts: no n-gram or continuation crosses it
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling hash (Fibonacci hashing)


def _hash(windows: np.ndarray) -> np.ndarray:
    """[N, n] token ids -> [N] uint64 hashes (wrapping arithmetic)."""
    h = np.zeros(len(windows), dtype=np.uint64)
    for column in windows.T.astype(np.uint64):
        h = (h ^ column) * _MIX
    return h


class CorpusIndex:
    """Token sequences, and for every n-gram (n = MIN..MAX_NGRAM) the positions that followed its occurrences."""

    def __init__(self, sequences: Iterable[Sequence[int]]) -> None:
        parts = [np.append(np.asarray(s, dtype=np.int32), _SEPARATOR) for s in sequences if len(s)]
        # Separators first too, so that even an empty corpus has windows of every size.
        self.tokens = np.concatenate([np.full(MAX_NGRAM, _SEPARATOR, dtype=np.int32), *parts])
        self.keys: dict[int, np.ndarray] = {}  # n -> [M] sorted hashes of the n-grams
        self.after: dict[int, np.ndarray] = {}  # n -> [M] position right after each (same order)
        for n in range(MIN_NGRAM, MAX_NGRAM + 1):
            windows = np.lib.stride_tricks.sliding_window_view(self.tokens, n)[:-1]  # windows[i] = tokens[i:i+n]
            after = np.arange(n, len(self.tokens), dtype=np.int32)
            keep = (windows != _SEPARATOR).all(axis=1) & (self.tokens[n:] != _SEPARATOR)
            keys = _hash(windows[keep])
            order = np.argsort(keys, kind="stable")  # equal keys stay in corpus order
            self.keys[n], self.after[n] = keys[order], after[keep][order]

    def __len__(self) -> int:
        return int((self.tokens != _SEPARATOR).sum())

    def continuations(self, context: Sequence[int], length: int) -> list[list[int]]:
        """What followed the longest suffix of `context` (n <= MAX_NGRAM tokens) that the corpus holds: at most
        SAMPLE occurrences, each at most `length` tokens, the most frequent branches first (a continuation ranks
        by how many others share its first token, then its first two, ...)."""
        for n in range(min(MAX_NGRAM, len(context)), MIN_NGRAM - 1, -1):
            key = _hash(np.asarray([context[-n:]], dtype=np.int32))[0]
            lo = int(np.searchsorted(self.keys[n], key, side="left"))
            hi = int(np.searchsorted(self.keys[n], key, side="right"))
            if hi == lo:
                continue
            picks = self.after[n][lo + np.linspace(0, hi - lo - 1, min(SAMPLE, hi - lo)).astype(np.int64)]
            found = []
            for start in picks.tolist():
                span = self.tokens[start:start + length].tolist()
                found.append(span[: span.index(_SEPARATOR)] if _SEPARATOR in span else span)
            shared = Counter(tuple(c[:j]) for c in found for j in range(1, len(c) + 1))
            return sorted(found, key=lambda c: [-shared[tuple(c[:j])] for j in range(1, len(c) + 1)])
        return []

    def draft(self, context: Sequence[int], depth: int, topk: int, budget: int) -> DraftTree:
        """The continuations of `context` as a tree (ngram_draft.continuation_tree), its estimates calibrated."""
        tree = continuation_tree(self.continuations(context, depth), depth, topk, budget)
        tree.logprobs = [CONFIDENCE_EXPONENT * logprob for logprob in tree.logprobs]
        return tree


def read_texts(path: Path) -> list[str]:
    """A corpus file: JSONL (optionally gzipped), one {"text": ...} per line."""
    opener = gzip.open if path.suffix == ".gz" else open
    texts = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise InvalidRequestError("ngram_corpus", f"{path}:{number} is not a {{\"text\": ...}} row")
                    texts.append(row["text"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError) as exc:
        raise InvalidRequestError("ngram_corpus", f"cannot read {path}: {exc}") from None
    return texts


_LOADED: dict[tuple[str, str], CorpusIndex] = {}


def load_corpus(path: str, tokenizer) -> CorpusIndex:
    """The corpus file at `path` in `tokenizer`'s ids, indexed once per process for a path and tokenizer (every
    engine of a process, e.g. a test session's, shares it: it is read-only)."""
    key = (str(Path(path).resolve()), str(tokenizer.name_or_path))
    if key not in _LOADED:
        texts = read_texts(Path(path))
        corpus = CorpusIndex(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        logger.info("ngram corpus %s: %d texts, %d tokens", path, len(texts), len(corpus))
        _LOADED[key] = corpus
    return _LOADED[key]
