"""Shapes of the MoE (and one dense) models our users run, from their public config.json files.

Sources: Qwen3-30B-A3B and Qwen3-235B-A22B configs (alibaba/InferSim hf_configs), gpt-oss-20b
(openai/gpt-oss-20b config.json via AI-Hypercomputer/maxtext), Mixtral-8x7B-Instruct-v0.1 config.json,
DeepSeek-V2-Lite config (config_16B.json), Qwen3-8B config.json (dense, for the "layering does not pay" case).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    experts: int  # routed experts per MoE layer (0: dense model)
    top_k: int
    expert_intermediate: int
    dense_intermediate: int = 0  # FFN width of dense layers (dense models, DeepSeek's first layers)
    dense_layers: int = 0  # leading layers with a dense FFN instead of MoE
    shared_experts: int = 0
    shared_intermediate: int = 0
    weight_bytes: float = 2.0  # bf16
    expert_weight_bytes: float = 2.0  # gpt-oss stores experts in MXFP4 (4.25 bits)
    kv_bytes_per_token_layer: float = 0.0  # 0: 2 * kv_heads * head_dim * weight_bytes (MLA models set it)

    @property
    def bytes_per_expert(self) -> float:
        return 3 * self.hidden * self.expert_intermediate * self.expert_weight_bytes

    @property
    def attn_weight_bytes(self) -> float:
        q = self.q_heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return (self.hidden * (q + 2 * kv) + q * self.hidden) * self.weight_bytes

    @property
    def kv_bytes(self) -> float:
        return self.kv_bytes_per_token_layer or 2 * self.kv_heads * self.head_dim * self.weight_bytes

    def is_moe_layer(self, layer: int) -> bool:
        return self.experts > 0 and layer >= self.dense_layers


MODELS = {m.name: m for m in (
    ModelShape("Qwen3-30B-A3B", 48, 2048, 32, 4, 128, 128, 8, 768),
    ModelShape("Qwen3-235B-A22B", 94, 4096, 64, 4, 128, 128, 8, 1536),
    ModelShape("GPT-OSS-20B", 24, 2880, 64, 8, 64, 32, 4, 2880, expert_weight_bytes=4.25 / 8),
    ModelShape("Mixtral-8x7B", 32, 4096, 32, 8, 128, 8, 2, 14336),
    # MLA: the cache holds the 512-dim compressed KV plus the 64-dim rope key per token and layer.
    ModelShape("DeepSeek-V2-Lite", 27, 2048, 16, 16, 192, 64, 6, 1408, dense_intermediate=10944, dense_layers=1,
               shared_experts=2, shared_intermediate=1408, kv_bytes_per_token_layer=(512 + 64) * 2),
    ModelShape("Qwen3-8B", 36, 4096, 32, 8, 128, 0, 0, 0, dense_intermediate=12288),
    # Our CPU benchmark model (sgl_layered/models/presets.py, bench-qwen3-moe), run in fp32.
    ModelShape("bench-qwen3-moe", 8, 512, 8, 4, 64, 64, 8, 512, weight_bytes=4.0, expert_weight_bytes=4.0),
)}
