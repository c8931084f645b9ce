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
        """Lay out one forward: per row, `appends` then speculative `nodes` with `parents` (-1 = root).

        Every request is checked before anything changes. The tensors are built in a few operations per forward
        and per node depth, never per token: at a few hundred rows a per-token loop costs more than the forward."""
        rows = len(seq_ids)
        slots = [self.slot(s) for s in seq_ids]
        widths = [len(a) + len(n) for a, n in zip(appends, nodes)]
        if not rows or max(widths) == 0:
            raise ValueError("a forward needs at least one new token")
        width = max(widths)
        bases = [self.lengths[slot] for slot in slots]
        spec0s = [self.spec_counts[slot] for slot in slots]
        roots = [base + len(app) for base, app in zip(bases, appends)]  # committed length once appends are in
        ids, writes, limits, ends = [], [], [], []
        for seq_id, slot, app, nds, par, base, spec0, root in zip(seq_ids, slots, appends, nodes, parents, bases,
                                                                   spec0s, roots):
            if len(nds) != len(par):
                raise ValueError("every speculative node needs a parent")
            if app and spec0:
                raise ValueError("tokens can only be committed while no speculation is pending")
            end = root + spec0 + len(nds)
            if end > self.capacity:
                raise ValueError(f"sequence {seq_id} would exceed the KV capacity of {self.capacity} tokens")
            if spec0 + len(nds) > self.max_spec_nodes:
                raise ValueError(f"more than {self.max_spec_nodes} speculative nodes for one sequence")
            for g, p in enumerate(par, start=spec0):
                if not -1 <= p < g:
                    raise ValueError(f"node {g} has parent {p}; parents must precede their children")
            pad = width - len(app) - len(nds)
            ids.append([*app, *nds, *[pad_token_id] * pad])
            writes.append([*range(base, root), *range(root + spec0, end), *[self.capacity] * pad])
            # Key columns each query sees below its row's committed length: appends causally, nodes the whole
            # prefix (their ancestors are added below), padding column 0 only (finite data; outputs discarded).
            limits.append([*range(base + 1, root + 1), *[root] * len(nds), *[1] * pad])
            ends.append(end)
        view_len = max(ends)
        input_ids = torch.tensor(ids, dtype=torch.long)
        write_pos = torch.tensor(writes, dtype=torch.long)
        allowed = torch.arange(view_len) < torch.tensor(limits)[..., None]  # [B, T, V]
        position_ids = torch.tensor([[*range(base, root), *[0] * (width - root + base)]
                                     for base, root in zip(bases, roots)], dtype=torch.long)
        if any(nodes):
            self._add_nodes(slots, spec0s, roots, [len(a) for a in appends], nodes, parents, position_ids, allowed)
        key_positions = self.key_pos[slots, :view_len].clone()  # [B, V]
        new = write_pos < self.capacity  # [B, T] real tokens (padding writes to the trash column)
        row = torch.arange(rows)[:, None].expand(rows, width)[new]
        key_positions[row, write_pos[new]] = position_ids[new]
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

    def _add_nodes(self, slots: list[int], spec0s: list[int], roots: list[int], starts: list[int],
                   nodes: list[list[int]], parents: list[list[int]], position_ids: torch.Tensor,
                   allowed: torch.Tensor) -> None:
        """Record the new nodes' ancestor bitmaps and depths, node t of every row at once (a parent precedes
        its child, so its bitmap is ready); set their RoPE positions (root + depth) and let each attend its own
        ancestors' columns."""
        most = max(len(n) for n in nodes)
        slot = torch.tensor(slots)
        spec0 = torch.tensor(spec0s)
        count = torch.tensor([len(n) for n in nodes])
        parent = torch.tensor([[*p, *[-1] * (most - len(p))] for p in parents], dtype=torch.long)  # [B, N]
        for t in range(most):
            live = (count > t).nonzero().flatten()
            s, g, p = slot[live], spec0[live] + t, parent[live, t]
            has_parent = p >= 0
            above = p.clamp(min=0)
            ancestors = self.spec_anc[s, above] & has_parent[:, None]  # [n, M]
            ancestors[torch.arange(live.numel()), g] = True
            self.spec_anc[s, g] = ancestors
            self.spec_depth[s, g] = torch.where(has_parent, self.spec_depth[s, above] + 1, 0)
        real = torch.arange(most) < count[:, None]  # [B, N]
        row = torch.arange(len(slots))[:, None].expand_as(real)[real]
        node = (spec0[:, None] + torch.arange(most))[real]  # node index in its slot's spec region
        query = (torch.tensor(starts)[:, None] + torch.arange(most))[real]  # its column in the forward
        root = torch.tensor(roots)[row]
        position_ids[row, query] = root + self.spec_depth[slot[row], node]
        hit, column = self.spec_anc[slot[row], node].nonzero(as_tuple=True)  # each node's ancestors-or-self
        allowed[row[hit], query[hit], root[hit] + column] = True

    def apply(self, plan: ForwardPlan, appends: list[list[int]], nodes: list[list[int]]) -> None:
        """Advance the bookkeeping after the forward of `plan` ran: appends become committed, nodes speculative."""
        new = plan.write_pos < self.capacity  # [B, T] real tokens (padding writes to the trash column)
        self.key_pos[plan.slots[:, None].expand_as(new)[new], plan.write_pos[new]] = plan.position_ids[new]
        for slot, app, nds in zip(plan.slots.tolist(), appends, nodes):
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
