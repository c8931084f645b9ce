"""A model next to its KV cache: the forward passes every decoding method is built from.

The worker knows nothing about drafting or acceptance. It feeds tokens and token trees through transformers'
own decoder layers (with the engine's cache and a custom 4D mask), returns logits, and keeps or drops
speculative KV entries when told. The same object runs in-process (CLI, tests) or inside a Ray actor.
"""

from __future__ import annotations

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.workers import attention, exact_attention, exact_linear
from mirrorspec.workers.exit_head import ExitHead
from mirrorspec.workers.interface import EarlyExit
from mirrorspec.workers.kv_cache import ForwardPlan, KVCache, KVLayout
from mirrorspec.workers.models import LoadedModel


class ModelWorker:
    uses_features = False  # True for drafters that take the target's hidden states as input
    feature_layers: tuple[int, ...] = ()  # feature drafters: the target layers they read besides its final state
    vocabulary: list[int] | None = None  # tokens a drafter can propose (None: all; reduced-vocabulary drafters)

    def __init__(self, loaded: LoadedModel, *, max_slots: int, capacity: int, max_spec_nodes: int,
                 exit_head: ExitHead | None = None, exact: bool = False) -> None:
        """`exact`: every token's logits are the same bits whether it is decoded alone, verified in a draft or
        batched with other sequences (fixed-tile linears, canonical attention: workers/exact_*.py)."""
        self.loaded = loaded
        self.exit_head = exit_head
        self.model = loaded.model
        config = self.model.config
        self.vocab_size: int = self.model.get_output_embeddings().weight.shape[0]
        self.num_layers: int = config.num_hidden_layers
        self.hidden_size: int = config.hidden_size
        # forward_hidden's extra outputs: the states after these layers (normed), before the final state.
        self.output_layers: tuple[int, ...] = ()
        # Mirror's default early exit: where the exit head was fitted, else half-way up (the logit lens).
        self.exit_layer: int = exit_head.meta.layer if exit_head is not None else self.num_layers // 2
        self.device = next(self.model.parameters()).device
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        layout = KVLayout(
            num_layers=config.num_hidden_layers,
            num_kv_heads=_local_kv_heads(self.model, config, head_dim),
            head_dim=head_dim,
            dtype=self.model.dtype,
            device=self.device,
        )
        self.cache = KVCache(layout, max_slots=max_slots, capacity=capacity, max_spec_nodes=max_spec_nodes)
        self._decoder = self.model.base_model
        self._lm_head = self.model.get_output_embeddings()
        self._softcap = getattr(config, "final_logit_softcapping", None)
        if exact:
            exact_linear.apply(self.model)
            self.model.set_attn_implementation(exact_attention.NAME)
        elif config._attn_implementation == "sdpa":
            self.model.set_attn_implementation(attention.NAME)
        self._float_mask = config._attn_implementation not in (attention.NAME, exact_attention.NAME)
        self._exit_rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # see _exit_vocab_rows
        self._windows = self._attention_windows(config)

    @staticmethod
    def _attention_windows(config) -> dict[str, int | None] | int | None:
        """Per layer type, the sliding window (None = full attention); a plain value if all layers agree."""
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if layer_types:
            return {kind: (window if kind == "sliding_attention" else None) for kind in set(layer_types)}
        return window if getattr(config, "use_sliding_window", True) else None

    # ------------------------------------------------------------------------------- sequence slots
    def open(self, seq_id: int) -> None:
        self.cache.allocate(seq_id)

    def release(self, seq_id: int) -> None:
        self.cache.release(seq_id)

    def length(self, seq_id: int) -> int:
        return self.cache.length(seq_id)

    def commit(self, paths: dict[int, list[int]]) -> None:
        self.cache.commit_paths(paths)

    def rollback(self, seq_id: int, num_tokens: int) -> None:
        self.cache.rollback(seq_id, num_tokens)

    def clear_speculation(self, seq_id: int) -> None:
        self.cache.clear_speculation(seq_id)

    def set_output_layers(self, layers: tuple[int, ...] | list[int]) -> None:
        """From now on forward_hidden returns, per token, the states after `layers` decoder layers (each through
        the final norm, so all blocks share one scale) and then the final state, concatenated: what a fused
        feature drafter reads (EAGLE-3). The logits do not change."""
        if any(not 1 <= layer < self.num_layers for layer in layers):
            raise InvalidRequestError("drafter.feature_layers", f"the drafter reads the states after layers "
                                      f"{list(layers)}; this target's layers are 1..{self.num_layers - 1}")
        self.output_layers = tuple(sorted(set(layers)))

    # ------------------------------------------------------------------------------------- forward
    def forward(
        self,
        seq_ids: list[int],
        appends: list[list[int]],
        nodes: list[list[int]] | None = None,
        parents: list[list[int]] | None = None,
        features: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """One batched forward. Per row: logits [k, V] for the last appended token (if any) then each new node.

        `appends` are committed at once; `nodes` join the row's speculation tree (parent -1 = child of the
        last committed token) until `commit` keeps one of their paths. `features` (per row, one vector per new
        token) are for models that take hidden states as input (feature drafters); plain models ignore them.
        """
        return self.forward_hidden(seq_ids, appends, nodes, parents, features)[0]

    @torch.inference_mode()
    def forward_hidden(
        self,
        seq_ids: list[int],
        appends: list[list[int]],
        nodes: list[list[int]] | None = None,
        parents: list[list[int]] | None = None,
        features: list[torch.Tensor] | None = None,
        early_exit: EarlyExit | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`forward`, plus per row the final (normed) hidden state of every new token, appends then nodes (after the
        states of `output_layers`, if set).

        With `early_exit`, its callback runs between its layer and the next one (see EarlyExit)."""
        nodes = nodes if nodes is not None else [[] for _ in seq_ids]
        parents = parents if parents is not None else [[] for _ in seq_ids]
        # Rows in slot order let the cache hand attention views of its buffers instead of gathered copies.
        order = sorted(range(len(seq_ids)), key=lambda i: self.cache.slot(seq_ids[i]))
        if order != list(range(len(seq_ids))):
            pick = lambda xs: None if xs is None else [xs[i] for i in order]  # noqa: E731
            if early_exit is not None:
                early_exit = _reordered(early_exit, order)
            logits, hidden = self.forward_hidden(pick(seq_ids), pick(appends), pick(nodes), pick(parents),
                                                 pick(features), early_exit)
            back = {i: k for k, i in enumerate(order)}
            return [logits[back[i]] for i in range(len(order))], [hidden[back[i]] for i in range(len(order))]
        plan = self.cache.plan(seq_ids, appends, nodes, parents)
        firsts = [len(app) - 1 if app else 0 for app in appends]  # each row's first output: the last append
        handles = []
        if early_exit is not None:
            fired: list[bool] = []

            def on_exit_layer(_module, _inputs, output) -> None:
                # Once: a drafter sharing these layers (self-drafting) may run inside the callback.
                if not fired:
                    fired.append(True)
                    self._early_exit(output, firsts, early_exit)

            handles.append(self._decoder.layers[early_exit.layer - 1].register_forward_hook(on_exit_layer))
        captured: dict[int, torch.Tensor] = {}  # the first pass only: a self-drafter may rerun shared layers
        handles += [self._decoder.layers[layer - 1].register_forward_hook(
            lambda _module, _inputs, output, layer=layer: captured.setdefault(
                layer, output[0] if isinstance(output, tuple) else output))
            for layer in self.output_layers]
        prompt_rows = exact_linear.PROMPT_ROWS.set(_prompt_rows(appends, nodes, plan.input_ids.shape[1],
                                                                self.device))
        try:
            hidden = self._decoder(
                **self._inputs(plan, features),
                attention_mask=self._masks(plan),
                position_ids=plan.position_ids.to(self.device),
                cache=self.cache.view(plan),
                use_cache=True,
            ).last_hidden_state
        finally:
            exact_linear.PROMPT_ROWS.reset(prompt_rows)
            for handle in handles:
                handle.remove()
        self.cache.apply(plan, appends, nodes)
        rows, cols, counts = [], [], []
        for r, (app, nds) in enumerate(zip(appends, nodes)):
            wanted = list(range(firsts[r], len(app) + len(nds)))
            rows += [r] * len(wanted)
            cols += wanted
            counts.append(len(wanted))
        logits = self._logits(hidden[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)])
        if captured:
            hidden = torch.cat([self._decoder.norm(captured[layer]) for layer in self.output_layers] + [hidden], dim=-1)
        per_row = [hidden[r, : len(app) + len(nds)] for r, (app, nds) in enumerate(zip(appends, nodes))]
        return list(torch.split(logits, counts)), per_row

    def _early_exit(self, output, firsts: list[int], spec: EarlyExit) -> None:
        """The exit head fitted for this layer (else the logit lens: the final norm), then the LM head
        (optionally over a vocabulary subset)."""
        hidden = output[0] if isinstance(output, tuple) else output
        vocab, weight = self._exit_vocab_rows(spec.vocab)
        results = []
        for r, (first, count) in enumerate(zip(firsts, spec.positions)):
            if count == 0:
                results.append((torch.empty(0, spec.kappa, dtype=torch.long), torch.empty(0, spec.kappa)))
                continue
            rows = hidden[r, first : first + count]
            if self.exit_head is not None and self.exit_head.meta.layer == spec.layer:
                normed = self.exit_head(rows)
            else:
                normed = self._decoder.norm(rows)
            logp = torch.log_softmax(self._exit_scores(normed, vocab, weight).float(), dim=-1)
            top = torch.topk(logp, min(spec.kappa, logp.shape[-1]), dim=-1)
            ids = top.indices if vocab is None else vocab[top.indices]
            results.append((ids.cpu(), top.values.cpu()))
        spec.callback(results)

    def _exit_scores(self, normed: torch.Tensor, vocab: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[-1] != normed.shape[-1]:
            # The LM head is split over tensor-parallel ranks by hidden columns (DeepSpeed AutoTP): only the
            # module itself (which all-reduces) gives the logits; the vocabulary subset is taken afterwards.
            full = self._lm_head(normed[None])[0]
            return full if vocab is None else full[..., vocab]
        return normed @ rows.T

    def _exit_vocab_rows(self, vocab: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(vocabulary on this device, its LM-head rows); gathered once per vocabulary, not every step."""
        if vocab is None:
            return None, self._lm_head.weight
        if self._exit_rows is None or self._exit_rows[0] is not vocab:
            on_device = vocab.to(self.device)
            self._exit_rows = (vocab, on_device, self._lm_head.weight[on_device])
        return self._exit_rows[1], self._exit_rows[2]

    def _inputs(self, plan: ForwardPlan, features: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        return {"input_ids": plan.input_ids.to(self.device)}

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, H] final hidden states (as forward_hidden returns them: the last H columns) -> [T, V] logits."""
        return self._logits(hidden[..., -self.hidden_size :])

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._lm_head(hidden[None])[0].float()  # [None]: a tensor-parallel LM head wants [B, T, H]
        if self._softcap:  # Gemma 2/3 cap their final logits inside the CausalLM forward we bypass
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _masks(self, plan: ForwardPlan):
        if isinstance(self._windows, dict):
            return {kind: self._mask(plan, window) for kind, window in self._windows.items()}
        return self._mask(plan, self._windows)

    def _mask(self, plan: ForwardPlan, window: int | None) -> torch.Tensor:
        allowed = plan.allowed
        if window is not None:
            allowed = allowed & (plan.key_positions[:, None, :] > plan.position_ids[:, :, None] - window)
        allowed = allowed[:, None].to(self.device)
        if not self._float_mask:
            return allowed
        additive = torch.zeros(allowed.shape, dtype=self.model.dtype, device=self.device)
        return additive.masked_fill_(~allowed, torch.finfo(self.model.dtype).min)


def _local_kv_heads(model: torch.nn.Module, config, head_dim: int) -> int:
    """KV heads this process holds: all of them, or this rank's share when tensor parallelism split them."""
    try:
        return model.base_model.layers[0].self_attn.k_proj.weight.shape[0] // head_dim
    except AttributeError:  # an attention layout without k_proj: not split by this engine
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _reordered(spec: EarlyExit, order: list[int]) -> EarlyExit:
    """The same early exit for a batch permuted by `order`; the callback still sees the caller's row order."""
    back = {i: k for k, i in enumerate(order)}

    def callback(results: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        spec.callback([results[back[i]] for i in range(len(order))])

    return EarlyExit(spec.layer, [spec.positions[i] for i in order], spec.kappa, callback, spec.vocab)


@torch.inference_mode()
def greedy_logits(worker, token_ids: list[int], steps: int, seq_id: int = -1) -> torch.Tensor:
    """Logits [steps + 1, V] after `token_ids` and after each of `steps` greedy tokens, through the worker's own
    KV cache (a probe for checking one placement of a model against another; uses one free slot)."""
    worker.open(seq_id)
    try:
        rows = [worker.forward([seq_id], [list(token_ids)])[0][-1]]
        for _ in range(steps):
            rows.append(worker.forward([seq_id], [[int(rows[-1].argmax())]])[0][-1])
        return torch.stack(rows).cpu()
    finally:
        worker.release(seq_id)


def _prompt_rows(appends: list[list[int]], nodes: list[list[int]], width: int,
                 device: torch.device) -> torch.Tensor | None:
    """[B * width] bool: the tokens of rows that append two or more tokens and draft none (prefills: the engine
    appends a step's tokens one at a time and drafts as nodes), for the exact path's prompt kernels; None if
    there are none."""
    prompts = [r for r, (app, nds) in enumerate(zip(appends, nodes)) if len(app) >= 2 and not nds]
    if not prompts:
        return None
    rows = torch.zeros(len(appends), width, dtype=torch.bool)
    for r in prompts:
        rows[r, : len(appends[r])] = True
    return rows.flatten().to(device)
