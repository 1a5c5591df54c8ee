"""Shapes of the embedded MoE checkpoints the project builds for itself.

No model hub is reachable from our machines, so tests and benchmarks run on small random-weight models
built locally and deterministically from a seed. `tiny-*` presets keep CI fast; `bench-*` presets carry
enough expert weight (about 0.8 GB in bf16) that re-streaming experts per chunk shows up in timings even
on a CPU, whose caches are far smaller.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelPreset:
    name: str
    architecture: str  # "qwen3_moe" | "mixtral" | "qwen2_moe" | "deepseek_v2" | dense: "llama" | "qwen3"
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    num_experts: int  # 0: a dense model (expert_intermediate is then its MLP width)
    top_k: int
    expert_intermediate: int
    shared_expert_intermediate: int = 0  # qwen2_moe: the gated shared expert's width; deepseek_v2: the shared expert's
    vocab_size: int = 2048
    max_positions: int = 16384
    seed: int = 0
    dtype: str = "bfloat16"
    extra: dict = field(default_factory=dict)

    def expert_bytes(self) -> int:
        """Bytes of one expert's weights (gate, up and down projections) in the stored dtype."""
        per_param = 2 if self.dtype in ("bfloat16", "float16") else 4
        return 3 * self.hidden * self.expert_intermediate * per_param


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        # 5 layers: group counts 2 and 3 both split the layers unevenly, which the tests want.
        ModelPreset("tiny-qwen3-moe", "qwen3_moe", num_layers=5, hidden=64, heads=4, kv_heads=2,
                    head_dim=16, num_experts=8, top_k=2, expert_intermediate=64),
        ModelPreset("tiny-mixtral", "mixtral", num_layers=5, hidden=64, heads=4, kv_heads=2,
                    head_dim=16, num_experts=8, top_k=2, expert_intermediate=64),
        ModelPreset("tiny-qwen2-moe", "qwen2_moe", num_layers=5, hidden=64, heads=4, kv_heads=2,
                    head_dim=16, num_experts=8, top_k=2, expert_intermediate=64, shared_expert_intermediate=128),
        # DeepSeek-V2 layout: MLA attention (latent KV, no q LoRA), a dense first layer, then routed experts plus
        # one ungated shared expert. head_dim is the rope part of each head; `extra` holds the MLA ranks and the
        # dense layer's width. 4 layers: 3 groups split them 2/1/1, so the dense layer shares a group with an
        # MoE layer. The yarn rope_scaling is what DeepSeek-V2-Lite ships (and SGLang's CPU rotary requires).
        ModelPreset("tiny-deepseek-v2", "deepseek_v2", num_layers=4, hidden=64, heads=4, kv_heads=4,
                    head_dim=8, num_experts=8, top_k=2, expert_intermediate=32, shared_expert_intermediate=32,
                    extra={"kv_lora_rank": 32, "qk_nope_head_dim": 16, "v_head_dim": 16, "dense_intermediate": 128,
                           "first_k_dense_replace": 1}),
        # DeepSeek-V3 layout: the same MLA layer with a q LoRA, and the noaux_tc router (sigmoid scores plus a
        # score-correction bias, top-2 of 4 expert groups).
        ModelPreset("tiny-deepseek-v3", "deepseek_v3", num_layers=4, hidden=64, heads=4, kv_heads=4,
                    head_dim=8, num_experts=8, top_k=2, expert_intermediate=32, shared_expert_intermediate=32,
                    extra={"kv_lora_rank": 32, "q_lora_rank": 48, "qk_nope_head_dim": 16, "v_head_dim": 16,
                           "dense_intermediate": 128, "first_k_dense_replace": 1, "n_group": 4, "topk_group": 2}),
        # Dense models: layered prefill runs them too, and gains nothing there (no experts to re-stream).
        ModelPreset("tiny-llama", "llama", num_layers=5, hidden=64, heads=4, kv_heads=2,
                    head_dim=16, num_experts=0, top_k=0, expert_intermediate=128),
        ModelPreset("tiny-qwen3", "qwen3", num_layers=5, hidden=64, heads=4, kv_heads=2,
                    head_dim=16, num_experts=0, top_k=0, expert_intermediate=128),
        # 8 layers x 64 experts x 3 x 512 x 512 x 2 bytes = 805 MB of expert weights.
        ModelPreset("bench-qwen3-moe", "qwen3_moe", num_layers=8, hidden=512, heads=8, kv_heads=4,
                    head_dim=64, num_experts=64, top_k=8, expert_intermediate=512),
        ModelPreset("bench-mixtral", "mixtral", num_layers=8, hidden=512, heads=8, kv_heads=4,
                    head_dim=64, num_experts=64, top_k=8, expert_intermediate=512),
        # Dense counterpart of bench-qwen3-moe: the same attention and the same active MLP width per token
        # (8 x 512 = 4096), so each token costs the same FLOPs; 100 MB of MLP weights that every pass reads.
        ModelPreset("bench-qwen3", "qwen3", num_layers=8, hidden=512, heads=8, kv_heads=4,
                    head_dim=64, num_experts=0, top_k=0, expert_intermediate=4096),
        # GPU test models: head dims the GPU attention kernels serve (FlashInfer and fa3 compile a few head dims;
        # 64 and 128 are in every build), 5 layers as in the tiny presets, fp16-friendly widths.
        ModelPreset("gpu-qwen3-moe", "qwen3_moe", num_layers=5, hidden=256, heads=4, kv_heads=2,
                    head_dim=64, num_experts=16, top_k=2, expert_intermediate=128),
        ModelPreset("gpu-mixtral", "mixtral", num_layers=5, hidden=256, heads=4, kv_heads=2,
                    head_dim=128, num_experts=8, top_k=2, expert_intermediate=128),
        ModelPreset("gpu-qwen2-moe", "qwen2_moe", num_layers=5, hidden=256, heads=4, kv_heads=2,
                    head_dim=64, num_experts=16, top_k=2, expert_intermediate=128, shared_expert_intermediate=256),
    ]
}

# A trained checkpoint (sgl_layered/models/train.py): the same Qwen3-MoE layout, its weights trained on Debian's
# `fortunes` text, so its routing comes from a trained router. `extra["train"]` is the recipe (it is part of the
# cache digest); build() never trains: `python -m sgl_layered.models train trained-qwen3-moe` does (~13 min, 1 core).
PRESETS["trained-qwen3-moe"] = ModelPreset(
    "trained-qwen3-moe", "qwen3_moe", num_layers=4, hidden=256, heads=4, kv_heads=2, head_dim=64, num_experts=32,
    top_k=4, expert_intermediate=128,
    extra={"train": {"train_format": 1, "corpus": "debian:fortunes", "steps": 400, "batch": 16, "seq_len": 256,
                     "lr": 3e-3, "min_lr": 3e-4, "warmup": 30, "weight_decay": 0.1, "aux_coef": 0.01, "clip": 1.0,
                     "chat_fraction": 0.5}})

DEFAULT_MODEL = "tiny-qwen3-moe"


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown embedded model {name!r}; choose one of {sorted(PRESETS)}") from None
