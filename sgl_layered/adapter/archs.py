"""Model architectures layered prefill supports, and where their layer stack lives.

A supported architecture needs: a decoder-layer class whose forward is `(positions, hidden_states,
forward_batch, ...) -> hidden_states` with the residual carried in `forward_batch.residual_stream` (the
0.5.23 layer-boundary convention), and the usual `model.model.{embed_tokens,layers,norm}`, `lm_head` and
`logits_processor`. The decoder-layer forward is the seam the fused pass wraps (see hooks.HOOKS).

DeepSeek-V2's decoder layer (DeepSeek-V3 uses the same class) differs in two ways its ArchSpec records: its
forward takes the model forward's BumpAllocator after forward_batch (`zero_allocator`), and returns
`(hidden_states, topk_indices)` (`returns_tuple`; the indices are None except for DeepSeek's sparse-attention
variants, which we refuse).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    architecture: str  # HF `architectures[0]`
    decoder_layer: str  # dotted path of the decoder-layer class whose forward we wrap
    label: str  # for logs and the hook table
    moe: bool = True  # dense models run layered too, but gain nothing (no expert weights to re-stream)
    zero_allocator: bool = False  # forward(positions, hidden, forward_batch, zero_allocator, ...)
    returns_tuple: bool = False  # forward returns (hidden_states, extra): DeepSeek-V2's (hidden, topk_indices)


SUPPORTED = {
    a.architecture: a
    for a in (
        ArchSpec("Qwen3MoeForCausalLM", "sglang.srt.models.qwen3_moe.Qwen3MoeDecoderLayer", "Qwen3-MoE"),
        ArchSpec("MixtralForCausalLM", "sglang.srt.models.mixtral.MixtralDecoderLayer", "Mixtral"),
        ArchSpec("Qwen2MoeForCausalLM", "sglang.srt.models.qwen2_moe.Qwen2MoeDecoderLayer", "Qwen2-MoE"),
        ArchSpec("DeepseekV2ForCausalLM", "sglang.srt.models.deepseek_v2.DeepseekV2DecoderLayer",
                 "DeepSeek-V2, MLA", zero_allocator=True, returns_tuple=True),
        ArchSpec("DeepseekV3ForCausalLM", "sglang.srt.models.deepseek_v2.DeepseekV2DecoderLayer",
                 "DeepSeek-V3, MLA", zero_allocator=True, returns_tuple=True),
        ArchSpec("LlamaForCausalLM", "sglang.srt.models.llama.LlamaDecoderLayer", "Llama, dense", moe=False),
        ArchSpec("Qwen3ForCausalLM", "sglang.srt.models.qwen3.Qwen3DecoderLayer", "Qwen3, dense", moe=False),
    )
}


# Architectures our users ask about that are refused for a known reason (see the README's model table).
NOT_YET = {
    "GptOssForCausalLM": "untested: SGLang 0.5.23 cannot run it on CPU (its attention passes per-head `sinks`, "
                         "which the torch_native backend's forward does not take), and no GPU was available to "
                         "verify the fused pass with its sinks and alternating sliding windows",
}


def unsupported_message(architecture: str) -> str:
    why = f": {NOT_YET[architecture]}" if architecture in NOT_YET else ""
    return (f"layered prefill does not support model architecture {architecture!r} yet{why} "
            f"(supported: {', '.join(sorted(SUPPORTED))})")


def decoder_layers() -> dict:
    """Each supported decoder-layer class once (DeepSeek-V2 and V3 share one), with its architectures' labels."""
    out = {}
    for spec in SUPPORTED.values():
        out[spec.decoder_layer] = "; ".join(filter(None, (out.get(spec.decoder_layer), spec.label)))
    return out


def spec_of_layer(layer) -> ArchSpec:
    """The ArchSpec whose decoder-layer class `layer` is."""
    name = f"{type(layer).__module__}.{type(layer).__qualname__}"
    for spec in SUPPORTED.values():
        if spec.decoder_layer == name:
            return spec
    raise RuntimeError(f"decoder layer {name} belongs to no supported architecture")


def layer_stack(model):
    """(embed_tokens, layers, final_norm) of a supported SGLang causal-LM model object."""
    inner = model.model
    return inner.embed_tokens, inner.layers, inner.norm
