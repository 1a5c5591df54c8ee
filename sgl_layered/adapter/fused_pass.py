"""One cohort piece per iteration: its prompt rows through one layer group.

Fused (decode requests running): SGLang runs its ordinary decode forward over all layers; the wrapped
decoder-layer forward (`decoder_layer_hook`, installed from hooks.HOOKS) splices the cohort's rows in front
of the decode rows at the group's first layer and takes them out after its last layer. Inside the group
every op runs once over both (one QKV GEMM, one MoE call per layer); attention splits rows (attention.py).
Group boundaries are handled the way SGLang hands activations across pipeline stages: the residual stream
is exported as an (output, residual) pair and rebuilt on the other side.

Alone (nothing decoding): the cohort's rows run through the group in a forward of their own.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from sglang.srt.eplb.expert_distribution import get_global_expert_distribution_recorder
from sglang.srt.layers.layer_boundary.residual import batch as residual_batch
from sglang.srt.layers.layer_boundary.residual.stream import ResidualStream
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context, get_attn_backend
from sglang.srt.runtime_context import get_model

from sgl_layered.runtime.stash import Activations, join, split

from . import experts
from .archs import layer_stack, spec_of_layer
from .attention import RowSplitAttention
from .views import fused_view

_ACTIVE: Optional["ActivePasses"] = None


class ActivePasses:
    """The pieces spliced into one decode forward, found by layer (their layer ranges never overlap)."""

    def __init__(self, passes):
        self.by_layer = {}
        for p in passes:
            for i in range(p.start, p.end):
                if i in self.by_layer:
                    raise RuntimeError(f"two layered pieces claim layer {i}")
                self.by_layer[i] = p
        self.index = passes[0].index if passes else {}

    def run_layer(self, original, layer, positions, hidden_states, forward_batch, *args, **kwargs):
        p = self.by_layer.get(self.index.get(id(layer)))
        if p is None:
            return original(layer, positions, hidden_states, forward_batch, *args, **kwargs)
        return p.run_layer(original, layer, positions, hidden_states, forward_batch, *args, **kwargs)


@contextlib.contextmanager
def active(passes):
    """Make `passes` the pieces the decoder-layer hook splices into the next forward."""
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("a layered pass is already active")
    _ACTIVE = ActivePasses(passes)
    try:
        yield _ACTIVE
    finally:
        _ACTIVE = None


def _cohort_rows(cohort):
    """Tell expert accounting (when on) that this layer's MoE call starts with the cohort's prompt rows."""
    ledger = experts.ledger()
    if ledger is None:
        return contextlib.nullcontext()
    return ledger.layout(experts.RowLayout(tuple(cohort.rids), tuple(int(n) for n in cohort.batch.extend_lens)))


def is_active() -> bool:
    return _ACTIVE is not None


def decoder_layer_hook(original, layer, positions, hidden_states, forward_batch, *args, **kwargs):
    """AROUND hook on a supported decoder layer's forward; a pass-through unless a piece is active."""
    if _ACTIVE is None:
        return original(layer, positions, hidden_states, forward_batch, *args, **kwargs)
    return _ACTIVE.run_layer(original, layer, positions, hidden_states, forward_batch, *args, **kwargs)


def export_activations(hidden, forward_batch) -> Activations:
    """Take a batch's layer-stack state out of its residual stream (completing any owed reduction)."""
    stream = residual_batch.stream_of(forward_batch)
    update = stream.pending.update if stream.pending is not None else None
    out, residual = stream.export(hidden)
    residual_batch.clear(forward_batch)
    return Activations(out, residual, update)


def import_activations(act: Activations, forward_batch):
    """Rebuild a batch's residual stream from exported state; return the hidden handle for the next layer."""
    if act.residual is None:
        residual_batch.start(forward_batch)
        return act.hidden
    hidden, forward_batch.residual_stream = ResidualStream.from_handoff(act.hidden, act.residual, act.update)
    return hidden


def _zero_allocator(num_layers: int, device):
    """What DeepSeek-V2's model forward hands its layers: a small zeroed fp32 scratch, two slots per layer."""
    from sglang.srt.utils.common import BumpAllocator

    return BumpAllocator(buffer_size=2 * num_layers, dtype=torch.float32, device=device)


def _no_row_outputs(extra) -> None:
    """A layer's outputs besides hidden_states (DeepSeek-V2's topk_indices) must not be per-row tensors: the
    fused pass would have to split them too. They are None for every model we support."""
    if any(x is not None for x in extra):
        raise RuntimeError("layered prefill cannot split a decoder layer's extra per-row outputs (a DeepSeek "
                           "sparse-attention model?)")


class PieceRunner:
    """Runs one Piece of the iteration's Step: the cohort's prompt rows through its layer range, fused into the
    decode forward or alone."""

    def __init__(self, model, cohort, layers):
        self.model = model
        self.cohort = cohort
        self.start, self.end = layers
        self.prefill_backend = cohort.backend  # its metadata was planned before the forward
        self.embed, self.layer_list, self.final_norm = layer_stack(model)
        self.spec = spec_of_layer(self.layer_list[self.start])
        self.index = {id(layer): i for i, layer in enumerate(self.layer_list)}
        self.num_layers = len(self.layer_list)
        self.ran = []
        self.view = None
        self.attention = None

    # -- fused into SGLang's decode forward ---------------------------------------------------------
    def run_layer(self, original, layer, positions, hidden, forward_batch, *args, **kwargs):
        i = self.index.get(id(layer))
        if i is None or not self.start <= i < self.end:
            return original(layer, positions, hidden, forward_batch, *args, **kwargs)
        if not forward_batch.forward_mode.is_decode():
            raise RuntimeError(f"layered pass expected a decode forward, got {forward_batch.forward_mode}")
        if i == self.start:
            hidden = self._join(hidden, forward_batch)
        with forward_context(ForwardContext(attn_backend=self.attention), forward_batch=self.view), \
                _cohort_rows(self.cohort):
            out = original(layer, self.view.positions, hidden, self.view, *args, **kwargs)
        self.ran.append(i)
        if i == self.end - 1:
            if not self.spec.returns_tuple:
                return self._split(out, forward_batch)
            hidden, *extra = out
            _no_row_outputs(extra)
            return (self._split(hidden, forward_batch), *extra)
        return out

    def _join(self, decode_hidden, decode_batch):
        prompt_batch = self.cohort.forward_batch
        self.attention = RowSplitAttention(self.prefill_backend, prompt_batch, get_attn_backend(), decode_batch)
        self.view = fused_view(prompt_batch, decode_batch)
        both = join(self._prompt_in(), export_activations(decode_hidden, decode_batch))
        return import_activations(both, self.view)

    def _split(self, out, decode_batch):
        prompt, decode = split(export_activations(out, self.view), self.cohort.forward_batch.input_ids.shape[0])
        self._prompt_out(prompt)
        self.view = self.attention = None
        return import_activations(decode, decode_batch)

    # -- on its own (no decode rows this iteration) -------------------------------------------------
    def run_alone(self):
        prompt_batch = self.cohort.forward_batch
        recorder = get_global_expert_distribution_recorder()
        with forward_context(ForwardContext(attn_backend=self.prefill_backend), forward_batch=prompt_batch), \
                get_model().override(shared_experts=self.model.shared_experts_config), _cohort_rows(self.cohort):
            hidden = import_activations(self._prompt_in(), prompt_batch)
            args = (_zero_allocator(self.end - self.start, hidden.device),) if self.spec.zero_allocator else ()
            for i in range(self.start, self.end):
                with recorder.with_current_layer(i):
                    hidden = self.layer_list[i](prompt_batch.positions, hidden, prompt_batch, *args)
                if self.spec.returns_tuple:
                    hidden, *extra = hidden
                    _no_row_outputs(extra)
                self.ran.append(i)
            self._prompt_out(export_activations(hidden, prompt_batch))

    # -- cohort activations in and out --------------------------------------------------------------
    def _prompt_in(self) -> Activations:
        if self.start == 0:
            embeds = self.cohort.input_embeds  # a request's own input_embeds (replace_embeds applied), if any
            return Activations(self.embed(self.cohort.forward_batch.input_ids) if embeds is None else embeds, None)
        stash, self.cohort.stash = self.cohort.stash, None
        if stash is None:
            raise RuntimeError(f"cohort {self.cohort.cohort_id} has no activations to resume at layer {self.start}")
        return stash

    def _prompt_out(self, act: Activations) -> None:
        if self.end < self.num_layers:
            self.cohort.stash = act
            return
        prompt_batch = self.cohort.forward_batch
        hidden = import_activations(act, prompt_batch)
        hidden = residual_batch.final_norm(hidden, prompt_batch, self.final_norm)
        self.cohort.logits = self.model.logits_processor(
            prompt_batch.input_ids, hidden, self.model.lm_head, prompt_batch)

    def check_complete(self) -> None:
        """Every layer of the group must have run exactly once, in order; anything else is a broken hook."""
        expected = list(range(self.start, self.end))
        if self.ran != expected:
            raise RuntimeError(
                f"layered pass over layers {self.start}..{self.end - 1} ran layers {self.ran}: the decoder-layer "
                "hook did not see this forward (a CUDA graph replay or an unwrapped code path?)")
