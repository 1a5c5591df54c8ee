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
    label: str  # for logs and the hook table
    moe: bool = True  # dense models run layered too, but gain nothing (no expert weights to re-stream)


SUPPORTED = {
    a.architecture: a
    for a in (
        ArchSpec("Qwen3MoeForCausalLM", "sglang.srt.models.qwen3_moe.Qwen3MoeDecoderLayer", "Qwen3-MoE"),
        ArchSpec("MixtralForCausalLM", "sglang.srt.models.mixtral.MixtralDecoderLayer", "Mixtral"),
        ArchSpec("Qwen2MoeForCausalLM", "sglang.srt.models.qwen2_moe.Qwen2MoeDecoderLayer", "Qwen2-MoE"),
        ArchSpec("LlamaForCausalLM", "sglang.srt.models.llama.LlamaDecoderLayer", "Llama, dense", moe=False),
        ArchSpec("Qwen3ForCausalLM", "sglang.srt.models.qwen3.Qwen3DecoderLayer", "Qwen3, dense", moe=False),
    )
}


# Architectures our users ask about that are refused for a known reason (see the README's model table).
NOT_YET = {
    "DeepseekV2ForCausalLM": "its MLA attention keeps a compressed latent KV whose prefill and decode paths differ; "
                             "the fused pass has not been wired to them (and stock SGLang 0.5.23 cannot run it on "
                             "CPU: its CPU rotary path needs rope_scaling, then torch_native extend attention fails "
                             "on MLA head sizes)",
    "DeepseekV3ForCausalLM": "same MLA attention as DeepSeek-V2 (see there)",
    "GptOssForCausalLM": "untested: SGLang 0.5.23 cannot run it on CPU (its attention passes per-head `sinks`, "
                         "which the torch_native backend's forward does not take), and no GPU was available to "
                         "verify the fused pass with its sinks and alternating sliding windows",
}


def unsupported_message(architecture: str) -> str:
    why = f": {NOT_YET[architecture]}" if architecture in NOT_YET else ""
    return (f"layered prefill does not support model architecture {architecture!r} yet{why} "
            f"(supported: {', '.join(sorted(SUPPORTED))})")


def layer_stack(model):
    """(embed_tokens, layers, final_norm) of a supported SGLang causal-LM model object."""
    inner = model.model
    return inner.embed_tokens, inner.layers, inner.norm
