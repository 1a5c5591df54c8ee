"""Model architectures layered prefill supports, and where their layer stack lives.

A supported architecture needs: a decoder-layer class whose forward is `(positions, hidden_states,
forward_batch, ...) -> hidden_states` with the residual carried in `forward_batch.residual_stream` (the
0.5.23 layer-boundary convention), and the usual `model.model.{embed_tokens,layers,norm}`, `lm_head` and
`logits_processor`. The decoder-layer forward is the seam the fused pass wraps (see hooks.HOOKS).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    architecture: str  # HF `architectures[0]`
    decoder_layer: str  # dotted path of the decoder-layer class whose forward we wrap


SUPPORTED = {
    a.architecture: a
    for a in (
        ArchSpec("Qwen3MoeForCausalLM", "sglang.srt.models.qwen3_moe.Qwen3MoeDecoderLayer"),
        ArchSpec("MixtralForCausalLM", "sglang.srt.models.mixtral.MixtralDecoderLayer"),
    )
}


def unsupported_message(architecture: str) -> str:
    return (f"layered prefill does not support model architecture {architecture!r} yet "
            f"(supported: {', '.join(sorted(SUPPORTED))})")


def layer_stack(model):
    """(embed_tokens, layers, final_norm) of a supported SGLang causal-LM model object."""
    inner = model.model
    return inner.embed_tokens, inner.layers, inner.norm
