"""Self-distillation data for drafters: the target answers a large prompt set, then labels its own answers.

Stage 1 (`generate_responses`): the engine decodes greedy answers in large batches (what the drafter must
predict at inference). Stage 2 (`label_sequences`): one teacher-forced target forward over prompt + answer keeps,
per position, the target's final hidden state (inputs of feature drafters; after the normed states of chosen
layers for fused-feature drafters, as the engine's target worker returns them) and the top-k of its next-token
distribution on the answer (soft labels). Both stages append to files in the data folder and skip what is already
there, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

RESPONSES = "responses.jsonl"
SHARD_PREFIX = "labels-"
TOP_K = 16


@dataclass
class Sequence:
    """One labelled example: token ids, where the answer starts, features and top-k teacher labels."""

    ids: torch.Tensor  # [T] prompt + answer
    prompt_len: int
    features: torch.Tensor  # [T, (layers + 1) * H] target (normed) layer states, final state last (float16)
    top_ids: torch.Tensor  # [T - prompt_len, K] teacher's top-k at positions prompt_len-1 .. T-2
    top_logp: torch.Tensor  # [T - prompt_len, K] their log-probabilities (float16)


def generate_responses(engine, prompts: list[dict], out_dir: Path, *, max_new_tokens: int, batch: int) -> None:
    """Append greedy answers for prompts not yet answered to responses.jsonl (resumable)."""
    from mirrorspec.params import SamplingParams, SpecParams

    path = out_dir / RESPONSES
    done = sum(1 for _ in path.open()) if path.exists() else 0
    todo = prompts[done:]
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    with path.open("a") as f, tqdm(total=len(prompts), initial=done, desc="target answers", unit="prompt") as bar:
        # Chunks of several batches: continuous batching refills slots as answers finish; each chunk is saved.
        for start in range(0, len(todo), 8 * batch):
            chunk = todo[start : start + 8 * batch]
            outs = engine.generate([p["prompt"] for p in chunk], sampling, SpecParams(method="ar"), chat=True)
            for p, out in zip(chunk, outs):
                record = {"category": p["category"], "prompt_ids": out.prompt_token_ids, "answer_ids": out.token_ids}
                f.write(json.dumps(record) + "\n")
            f.flush()
            bar.update(len(chunk))


def read_responses(out_dir: Path) -> list[dict]:
    with (out_dir / RESPONSES).open() as f:
        return [json.loads(line) for line in f]


def shard_prefix(layers: list[int] | tuple[int, ...] = ()) -> str:
    """File prefix of the label shards holding the states after `layers` (and the final state)."""
    return SHARD_PREFIX + "".join(f"l{layer}-" for layer in layers)


@torch.inference_mode()
def label_sequences(model, responses: list[dict], out_dir: Path, *, layers: list[int] | tuple[int, ...] = (),
                    shard_size: int = 256, batch: int = 8) -> None:
    """Teacher-force the target over prompt + answer; save features (the states after `layers`, then the final
    state) and top-k labels in shards (resumable)."""
    decoder, head = model.base_model, model.get_output_embeddings()
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = range(0, len(responses), shard_size)
    for shard, start in enumerate(tqdm(shards, desc="target labels", unit="shard")):
        path = out_dir / f"{shard_prefix(layers)}{shard:05d}.pt"
        if path.exists():
            continue
        rows = responses[start : start + shard_size]
        # Batches of similar lengths waste less on padding; the shard keeps the responses' order.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["prompt_ids"]) + len(rows[i]["answer_ids"]))
        labelled: dict[int, Sequence] = {}
        for b in range(0, len(order), batch):
            picked = order[b : b + batch]
            labelled.update(zip(picked, _label_batch(decoder, head, [rows[i] for i in picked], layers)))
        examples = [labelled[i] for i in range(len(rows))]
        tmp = path.with_suffix(".tmp")
        torch.save([vars(e) for e in examples], tmp)
        tmp.rename(path)  # a shard is either complete or absent


def padded_batch(rows: list[dict]) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """prompt + answer of each row, right-padded: (sequences, input ids [B, T], attention mask [B, T])."""
    seqs = [r["prompt_ids"] + r["answer_ids"] for r in rows]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return seqs, ids, mask


def _label_batch(decoder, head, rows: list[dict], layers: list[int] | tuple[int, ...]) -> list[Sequence]:
    seqs, ids, mask = padded_batch(rows)
    output = decoder(input_ids=ids, attention_mask=mask, output_hidden_states=bool(layers))
    hidden = output.last_hidden_state
    # hidden_states[k]: the state after k layers; through the final norm, as the target worker returns them.
    features = torch.cat([decoder.norm(output.hidden_states[k]) for k in layers] + [hidden], dim=-1)
    out = []
    for i, (row, s) in enumerate(zip(rows, seqs)):
        p = len(row["prompt_ids"])
        answer_positions = hidden[i, p - 1 : len(s) - 1]
        logp = torch.log_softmax(head(answer_positions).float(), dim=-1)
        top = torch.topk(logp, TOP_K, dim=-1)
        out.append(Sequence(ids=torch.tensor(s), prompt_len=p, features=features[i, : len(s)].half().clone(),
                            top_ids=top.indices.int(), top_logp=top.values.half()))
    return out


def load_shards(out_dir: Path, layers: list[int] | tuple[int, ...] = ()) -> list[Sequence]:
    examples = []
    for path in sorted(out_dir.glob(f"{shard_prefix(layers)}[0-9]*.pt")):
        examples += [Sequence(**e) for e in torch.load(path)]
    return examples


def draft_vocabulary(responses: list[dict], size: int, always: list[int]) -> list[int]:
    """The `size` most frequent answer tokens (plus `always`, e.g. EOS), most frequent first."""
    counts = Counter(t for r in responses for t in r["answer_ids"])
    vocab = [t for t in always]
    vocab += [t for t, _ in counts.most_common() if t not in set(always)][: size - len(vocab)]
    covered = sum(counts[t] for t in vocab) / max(1, sum(counts.values()))
    logger.info("draft vocabulary: %d tokens cover %.1f%% of answer tokens", len(vocab), 100 * covered)
    return vocab
