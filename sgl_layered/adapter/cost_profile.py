"""The roofline cost model the adaptive policy predicts with (its "choose" switch): the core's per-layer model (the
simulator uses the same), fed the served model's shape from its HF config and a hardware profile picked by device."""

from __future__ import annotations

import logging
from typing import Optional

from sgl_layered.core.config import LayeredConfig
from sgl_layered.core.hardware import ITERATION_OVERHEAD_S, PROFILES
from sgl_layered.core.roofline import CostModel
from sgl_layered.core.shapes import ModelShape

logger = logging.getLogger("sgl_layered")

GPU_ITERATION_OVERHEAD_S = 0.002  # scheduling, sampling, embedding and LM head (the simulator's GPU figure)


def model_shape(hf_config, dtype_bytes: int) -> ModelShape:
    """Layers, attention and (MoE) FFN widths of a Qwen3-MoE / Qwen2-MoE / Mixtral / Llama / Qwen3 / DeepSeek-V2
    config."""
    if getattr(hf_config, "kv_lora_rank", None):  # DeepSeek-V2 (MLA), as core/shapes.py describes DeepSeek-V2-Lite
        c = hf_config
        rope = int(c.qk_rope_head_dim)
        return ModelShape(
            name=str(c.model_type), layers=int(c.num_hidden_layers), hidden=int(c.hidden_size),
            q_heads=int(c.num_attention_heads), kv_heads=int(c.num_attention_heads),
            head_dim=int(c.qk_nope_head_dim) + rope, experts=int(c.n_routed_experts), top_k=int(c.num_experts_per_tok),
            expert_intermediate=int(c.moe_intermediate_size), dense_intermediate=int(c.intermediate_size),
            dense_layers=int(c.first_k_dense_replace), shared_experts=int(c.n_shared_experts or 0),
            shared_intermediate=int(c.moe_intermediate_size), weight_bytes=float(dtype_bytes),
            expert_weight_bytes=float(dtype_bytes), kv_bytes_per_token_layer=(int(c.kv_lora_rank) + rope) * dtype_bytes)
    heads = int(hf_config.num_attention_heads)
    hidden = int(hf_config.hidden_size)
    experts = int(getattr(hf_config, "num_experts", 0) or getattr(hf_config, "num_local_experts", 0) or 0)
    intermediate = int(getattr(hf_config, "intermediate_size", 0) or 0)
    shared = int(getattr(hf_config, "shared_expert_intermediate_size", 0) or 0)
    return ModelShape(
        name=str(getattr(hf_config, "model_type", "model")), layers=int(hf_config.num_hidden_layers), hidden=hidden,
        q_heads=heads, kv_heads=int(getattr(hf_config, "num_key_value_heads", heads) or heads),
        head_dim=int(getattr(hf_config, "head_dim", 0) or hidden // heads),
        experts=experts, top_k=int(getattr(hf_config, "num_experts_per_tok", 0) or 0) if experts else 0,
        expert_intermediate=int(getattr(hf_config, "moe_intermediate_size", 0) or intermediate) if experts else 0,
        dense_intermediate=intermediate, shared_experts=1 if shared else 0, shared_intermediate=shared,
        weight_bytes=float(dtype_bytes), expert_weight_bytes=float(dtype_bytes))


def profile_name(config: LayeredConfig, on_cpu: bool, device_name: str) -> Optional[str]:
    name = config.layered_prefill_cost_profile
    if name != "auto":
        return None if name == "none" else name
    if on_cpu:
        return "CPU-calibrated"
    for gpu in ("H200", "H100"):
        if gpu in device_name:
            return f"{gpu}-SXM"
    return None


def cost_model(config: LayeredConfig, hf_config, dtype_bytes: int, tp_size: int, on_cpu: bool,
               device_name: str) -> Optional[CostModel]:
    """The roofline model (its `seconds` is the policy's SecondsPredictor, its `layer_costs` the per-layer
    split), or None (logged) when the policy does not choose or no profile fits this device."""
    if config.layered_prefill_policy != "adaptive" or "choose" not in config.switches:
        return None
    name = profile_name(config, on_cpu, device_name)
    if name is None:
        if config.layered_prefill_cost_profile == "auto":
            logger.warning("layered prefill: no cost profile for device %r; per-cohort layered/chunked choice is "
                           "off (pass --layered-prefill-cost-profile %s)", device_name,
                           "|".join(n for n in PROFILES))
        return None
    alpha = config.layered_prefill_routing_alpha if config.layered_prefill_routing == "calibrated" else None
    model = CostModel(model_shape(hf_config, dtype_bytes), PROFILES[name], tp=tp_size, alpha=alpha,
                      overhead_s=ITERATION_OVERHEAD_S.get(name, GPU_ITERATION_OVERHEAD_S))
    logger.info("layered prefill: per-cohort layered/chunked choice with cost profile %s", name)
    return model
