"""The engine's KV cache: preallocated per-slot buffers, token trees, per-sequence rollback.

Layout. One key and one value buffer of shape [layers, slots, kv_heads, capacity + 1, head_dim], allocated
once (static shapes, so a CUDA-graph / torch.compile path can capture forwards without re-allocating). Each
live sequence owns one slot. Live sequences always occupy slots 0..n-1 (a released slot is refilled by moving
the last sequence into it), and workers order each batch by slot, so a forward over all live sequences (or over
the newest ones, as a prefill is) reads plain views of the buffers, with no gather. Position `capacity` of every
slot is a trash column: padding tokens write there and nobody reads it.

Per slot the cache knows:
  length        committed tokens, at positions [0, length)
  spec region   speculative tree nodes written after the committed tokens, node g at position length + g,
                with an ancestor-or-self bitmap so that every node attends only to its own path.

One forward feeds, per sequence, `appends` (tokens committed right away: a prompt, or tokens the model has not
seen yet) followed by `nodes` (speculative tree nodes; parent -1 means "child of the last committed token").
After the target's verdict, `commit_path` keeps one root-to-node path of the spec region, moving its KV entries
next to the committed prefix (EAGLE-style compaction), and drops the rest; `rollback` forgets committed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


@dataclass
class ForwardPlan:
    """Everything one batched forward needs, derived from the cache state and the new tokens."""

    slots: torch.Tensor  # [B] slot of each batch row
    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T] RoPE positions (tree nodes: prefix length + depth)
    write_pos: torch.Tensor  # [B, T] buffer column each new token is written to (capacity = trash)
    key_positions: torch.Tensor  # [B, V] RoPE position of every visible key column
    allowed: torch.Tensor  # [B, T, V] bool: query t may attend key column v
    view_len: int  # V: number of buffer columns visible to this forward
    contiguous: bool  # slots are consecutive (s0, s0+1, ...), so buffers are read as views, not gathered


class KVCache:
    """Slot-based KV storage shared by every forward of one model."""

    def __init__(self, layout: KVLayout, max_slots: int, capacity: int, max_spec_nodes: int) -> None:
        if max_slots < 1 or capacity < 2 or max_spec_nodes < 1:
            raise ValueError("max_slots, capacity and max_spec_nodes must be positive")
        self.layout = layout
        self.max_slots = max_slots
        self.capacity = capacity
        self.max_spec_nodes = max_spec_nodes
        shape = (layout.num_layers, max_slots, layout.num_kv_heads, capacity + 1, layout.head_dim)
        # Zeros, not empty: stale columns are read (masked) by attention and must never hold NaN.
        self.keys = torch.zeros(shape, dtype=layout.dtype, device=layout.device)
        self.values = torch.zeros(shape, dtype=layout.dtype, device=layout.device)
        self.key_pos = torch.zeros(max_slots, capacity + 1, dtype=torch.long)
        self.spec_anc = torch.zeros(max_slots, max_spec_nodes, max_spec_nodes, dtype=torch.bool)
        self.spec_depth = torch.zeros(max_slots, max_spec_nodes, dtype=torch.long)
        self.lengths = [0] * max_slots
        self.spec_counts = [0] * max_slots
        self._slot_of: dict[int, int] = {}
        self._seq_in: list[int | None] = [None] * max_slots

    # ----------------------------------------------------------------------------------------- slots
    @property
    def num_live(self) -> int:
        return len(self._slot_of)

    def has(self, seq_id: int) -> bool:
        return seq_id in self._slot_of

    def slot(self, seq_id: int) -> int:
        try:
            return self._slot_of[seq_id]
        except KeyError:
            raise KeyError(f"sequence {seq_id} has no KV slot") from None

    def length(self, seq_id: int) -> int:
        return self.lengths[self.slot(seq_id)]

    def spec_count(self, seq_id: int) -> int:
        return self.spec_counts[self.slot(seq_id)]

    def allocate(self, seq_id: int) -> int:
        if seq_id in self._slot_of:
            raise ValueError(f"sequence {seq_id} already has a KV slot")
        if self.num_live >= self.max_slots:
            raise RuntimeError(f"all {self.max_slots} KV slots are in use")
        slot = self.num_live
        self._slot_of[seq_id] = slot
        self._seq_in[slot] = seq_id
        self.lengths[slot] = 0
        self.spec_counts[slot] = 0
        return slot

    def release(self, seq_id: int) -> None:
        """Free a slot; the last live sequence moves into it so live slots stay 0..n-1."""
        slot = self._slot_of.pop(seq_id)
        last = self.num_live  # index of the last live slot before the pop
        if slot != last:
            moved = self._seq_in[last]
            n = self.lengths[last] + self.spec_counts[last]
            self.keys[:, slot, :, :n] = self.keys[:, last, :, :n]
            self.values[:, slot, :, :n] = self.values[:, last, :, :n]
            self.key_pos[slot, :n] = self.key_pos[last, :n]
            self.spec_anc[slot] = self.spec_anc[last]
            self.spec_depth[slot] = self.spec_depth[last]
            self.lengths[slot] = self.lengths[last]
            self.spec_counts[slot] = self.spec_counts[last]
            self._slot_of[moved] = slot
            self._seq_in[slot] = moved
        self._seq_in[last] = None
        self.lengths[last] = 0
        self.spec_counts[last] = 0

    # ------------------------------------------------------------------------------ cache operations
    def rollback(self, seq_id: int, num_tokens: int) -> None:
        """Forget the last `num_tokens` committed tokens (and any speculative nodes)."""
        slot = self.slot(seq_id)
        if not 0 <= num_tokens <= self.lengths[slot]:
            raise ValueError(f"cannot roll back {num_tokens} of {self.lengths[slot]} tokens")
        self.lengths[slot] -= num_tokens
        self.spec_counts[slot] = 0

    def clear_speculation(self, seq_id: int) -> None:
        self.spec_counts[self.slot(seq_id)] = 0

    def commit_paths(self, paths: dict[int, list[int]]) -> None:
        """Keep, per sequence, one path of its speculative nodes (node indices, root first) and drop the rest.

        The kept nodes' KV entries move to the columns right after the committed prefix, in path order.
        """
        src_slots, src_cols, dst_cols = [], [], []
        for seq_id, path in paths.items():
            slot = self.slot(seq_id)
            start = self.lengths[slot]
            self._check_path(slot, path)
            for k, node in enumerate(path):
                if node != k:  # a chain prefix is already in place
                    src_slots.append(slot)
                    src_cols.append(start + node)
                    dst_cols.append(start + k)
            self.lengths[slot] = start + len(path)
            self.spec_counts[slot] = 0
        if src_slots:
            s = torch.tensor(src_slots, device=self.keys.device)
            src = torch.tensor(src_cols, device=self.keys.device)
            dst = torch.tensor(dst_cols, device=self.keys.device)
            # Gather first, then scatter: a destination may be another entry's source.
            self.keys[:, s, :, dst] = self.keys[:, s, :, src]
            self.values[:, s, :, dst] = self.values[:, s, :, src]
            self.key_pos[s.cpu(), dst.cpu()] = self.key_pos[s.cpu(), src.cpu()]

    def _check_path(self, slot: int, path: list[int]) -> None:
        count = self.spec_counts[slot]
        for k, node in enumerate(path):
            if not 0 <= node < count:
                raise ValueError(f"path node {node} is not a speculative node (have {count})")
            if int(self.spec_depth[slot, node]) != k:
                raise ValueError(f"path {path} is not a root-first chain of the speculation tree")
            if k and not bool(self.spec_anc[slot, node, path[k - 1]]):
                raise ValueError(f"path {path} is not a chain: {path[k - 1]} is not an ancestor of {node}")

    # ------------------------------------------------------------------------------------ planning
    def plan(
        self,
        seq_ids: list[int],
        appends: list[list[int]],
        nodes: list[list[int]],
        parents: list[list[int]],
        pad_token_id: int = 0,
    ) -> ForwardPlan:
        """Lay out one forward: per row, `appends` then speculative `nodes` with `parents` (-1 = root)."""
        rows = len(seq_ids)
        slots = [self.slot(s) for s in seq_ids]
        widths = [len(a) + len(n) for a, n in zip(appends, nodes)]
        if not rows or max(widths) == 0:
            raise ValueError("a forward needs at least one new token")
        width = max(widths)
        input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((rows, width), dtype=torch.long)
        write_pos = torch.full((rows, width), self.capacity, dtype=torch.long)
        # New spec nodes only extend their parents' ancestor rows, so the bookkeeping is cheap per node.
        new_ends = []
        for r, (slot, app, nds, par) in enumerate(zip(slots, appends, nodes, parents)):
            if len(nds) != len(par):
                raise ValueError("every speculative node needs a parent")
            if app and self.spec_counts[slot]:
                raise ValueError("tokens can only be committed while no speculation is pending")
            base = self.lengths[slot]
            spec0 = self.spec_counts[slot]
            end = base + len(app) + spec0 + len(nds)
            if end > self.capacity:
                raise ValueError(f"sequence {seq_ids[r]} would exceed the KV capacity of {self.capacity} tokens")
            if spec0 + len(nds) > self.max_spec_nodes:
                raise ValueError(f"more than {self.max_spec_nodes} speculative nodes for one sequence")
            n_app = len(app)
            if n_app:
                input_ids[r, :n_app] = torch.tensor(app)
                cols = torch.arange(base, base + n_app)
                position_ids[r, :n_app] = cols
                write_pos[r, :n_app] = cols
            root = base + n_app  # committed length once the appends are in
            for t, (tok, p) in enumerate(zip(nds, par)):
                g = spec0 + t
                if not -1 <= p < g:
                    raise ValueError(f"node {g} has parent {p}; parents must precede their children")
                anc = self.spec_anc[slot, g]
                anc.zero_()
                if p >= 0:
                    anc |= self.spec_anc[slot, p]
                    self.spec_depth[slot, g] = self.spec_depth[slot, p] + 1
                else:
                    self.spec_depth[slot, g] = 0
                anc[g] = True
                input_ids[r, n_app + t] = tok
                position_ids[r, n_app + t] = root + self.spec_depth[slot, g]
                write_pos[r, n_app + t] = root + g
            new_ends.append(end)
        view_len = max(new_ends)
        allowed = torch.zeros((rows, width, view_len), dtype=torch.bool)
        key_positions = torch.zeros((rows, view_len), dtype=torch.long)
        for r, (slot, app, nds) in enumerate(zip(slots, appends, nodes)):
            base, n_app = self.lengths[slot], len(app)
            root = base + n_app
            spec_total = self.spec_counts[slot] + len(nds)
            # Appended tokens are causal over the prefix; spec nodes see the whole prefix plus their ancestors.
            for t in range(n_app):
                allowed[r, t, : base + t + 1] = True
            q0 = n_app
            q1 = n_app + len(nds)
            if q1 > q0:
                allowed[r, q0:q1, :root] = True
                g0 = self.spec_counts[slot]
                allowed[r, q0:q1, root : root + spec_total] = self.spec_anc[slot, g0 : g0 + len(nds), :spec_total]
            # Padding queries attend to column 0 only (finite data); their outputs are discarded.
            allowed[r, q1:, 0] = True
            key_positions[r] = self.key_pos[slot, :view_len]
            new_cols = write_pos[r, :q1]
            key_positions[r, new_cols] = position_ids[r, :q1]
        contiguous = slots == list(range(slots[0], slots[0] + rows))
        return ForwardPlan(
            slots=torch.tensor(slots),
            input_ids=input_ids,
            position_ids=position_ids,
            write_pos=write_pos,
            key_positions=key_positions,
            allowed=allowed,
            view_len=view_len,
            contiguous=contiguous,
        )

    def apply(self, plan: ForwardPlan, seq_ids: list[int], appends: list[list[int]], nodes: list[list[int]]) -> None:
        """Advance the bookkeeping after the forward of `plan` ran: appends become committed, nodes speculative."""
        for r, (seq_id, app, nds) in enumerate(zip(seq_ids, appends, nodes)):
            slot = self.slot(seq_id)
            n = len(app) + len(nds)
            cols = plan.write_pos[r, :n]
            self.key_pos[slot, cols] = plan.position_ids[r, :n]
            self.lengths[slot] += len(app)
            self.spec_counts[slot] += len(nds)

    def view(self, plan: ForwardPlan) -> "CacheView":
        return CacheView(self, plan)


class CacheView(Cache):
    """The transformers `Cache` one forward sees: writes new K/V into the slots, returns the visible columns."""

    def __init__(self, store: KVCache, plan: ForwardPlan) -> None:
        super().__init__(layers=[])
        self.store = store
        device = store.keys.device
        rows = plan.slots.shape[0]
        self._rows = plan.slots.to(device)[:, None].expand(rows, plan.write_pos.shape[1])
        self._cols = plan.write_pos.to(device)
        self._slots = plan.slots.to(device)
        self._view_len = plan.view_len
        self._contiguous = plan.contiguous

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.store.keys[layer_idx], self.store.values[layer_idx]
        # [B, H, T, D] -> [B, T, H, D] matches the advanced-index layout of buf[rows, :, cols].
        keys[self._rows, :, self._cols] = key_states.transpose(1, 2).to(keys.dtype)
        values[self._rows, :, self._cols] = value_states.transpose(1, 2).to(values.dtype)
        if self._contiguous:
            first, n = int(self._slots[0]), self._slots.shape[0]
            rows = slice(first, first + n)
            return keys[rows, :, : self._view_len], values[rows, :, : self._view_len]
        return keys[self._slots, :, : self._view_len], values[self._slots, :, : self._view_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._view_len

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.store.capacity
