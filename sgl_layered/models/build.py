"""Build an embedded MoE checkpoint (config, tokenizer, seeded random safetensors weights) into a cache.

The output directory name carries a digest of the preset and of this builder's format version, so a
changed preset never reuses a stale checkpoint, and a finished build is reused without touching it.
Writes go to a temporary sibling directory that is renamed into place, so an interrupted build never
leaves a half-written model that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from .presets import ModelPreset, get_preset
from .tokenizer import EOS_TOKEN, train_tokenizer

FORMAT_VERSION = 1


def cache_root() -> Path:
    env = os.environ.get("SGLANG_LAYERED_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sgl_layered"


def preset_digest(preset: ModelPreset) -> str:
    fields = asdict(preset)
    if not fields["shared_expert_intermediate"]:  # added later; absent keeps earlier presets' cache paths
        del fields["shared_expert_intermediate"]
    blob = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def model_dir(preset: ModelPreset) -> Path:
    return cache_root() / "models" / f"{preset.name}-{preset_digest(preset)}"


def hf_config(p: ModelPreset, eos_id: int) -> dict:
    common = {
        "vocab_size": p.vocab_size,
        "hidden_size": p.hidden,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "head_dim": p.head_dim,
        "max_position_embeddings": p.max_positions,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": p.dtype,
        "eos_token_id": eos_id,
        "bos_token_id": None,
    }
    if p.num_experts:
        common["num_experts_per_tok"] = p.top_k
    # Keys the Qwen MoE configs (Qwen3-MoE, Qwen2-MoE) share: every layer sparse, no sliding window.
    qwen_moe = {"num_experts": p.num_experts, "moe_intermediate_size": p.expert_intermediate,
                "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False}
    if p.architecture == "qwen3_moe":
        return {**common, **qwen_moe, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
                "intermediate_size": p.expert_intermediate * p.top_k, "norm_topk_prob": True,
                "attention_bias": False}
    if p.architecture == "mixtral":
        return {
            **common,
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "num_local_experts": p.num_experts,
            "intermediate_size": p.expert_intermediate,
            "sliding_window": None,
        }
    if p.architecture == "qwen2_moe":
        return {**common, **qwen_moe, "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
                "shared_expert_intermediate_size": p.shared_expert_intermediate,
                "intermediate_size": p.shared_expert_intermediate, "norm_topk_prob": False}
    if p.architecture in ("deepseek_v2", "deepseek_v3"):
        return _deepseek_config(p, common)
    if p.architecture == "llama":
        return {**common, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "intermediate_size": p.expert_intermediate, "attention_bias": False}
    if p.architecture == "qwen3":
        return {**common, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                "intermediate_size": p.expert_intermediate, "attention_bias": False, "use_sliding_window": False}
    raise ValueError(f"no builder for architecture {p.architecture!r}")


def _deepseek_config(p: ModelPreset, common: dict) -> dict:
    """DeepSeek-V2/V3's config: MLA ranks, dense first layers, routed + shared experts, yarn rope scaling.
    V3 adds its noaux_tc router (sigmoid scores, a score-correction bias, grouped top-k)."""
    x = p.extra
    config = {k: v for k, v in common.items() if k != "head_dim"}  # MLA head sizes are given per part
    config.update({
        "q_lora_rank": x.get("q_lora_rank"), "kv_lora_rank": x["kv_lora_rank"],
        "qk_nope_head_dim": x["qk_nope_head_dim"], "qk_rope_head_dim": p.head_dim, "v_head_dim": x["v_head_dim"],
        "intermediate_size": x["dense_intermediate"], "first_k_dense_replace": x["first_k_dense_replace"],
        "moe_layer_freq": 1, "n_routed_experts": p.num_experts, "moe_intermediate_size": p.expert_intermediate,
        "n_shared_experts": p.shared_expert_intermediate // p.expert_intermediate,
        "aux_loss_alpha": 0.001, "seq_aux": True,
        # DeepSeek-V2-Lite's yarn settings; SGLang 0.5.23's CPU rotary path for MLA needs a rope_scaling.
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": p.max_positions // 4,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    })
    if p.architecture == "deepseek_v3":
        return {**config, "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
                "routed_scaling_factor": 2.5, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
                "n_group": x["n_group"], "topk_group": x["topk_group"], "norm_topk_prob": True}
    return {**config, "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
            "routed_scaling_factor": 1.0, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
            "scoring_func": "softmax", "norm_topk_prob": False}


def _deepseek_weights(p: ModelPreset):
    x = p.extra
    h, heads, rope = p.hidden, p.heads, p.head_dim
    nope, v, rank = x["qk_nope_head_dim"], x["v_head_dim"], x["kv_lora_rank"]
    q_rank = x.get("q_lora_rank")
    yield "model.embed_tokens.weight", (p.vocab_size, h), "embed"
    for i in range(p.num_layers):
        pre = f"model.layers.{i}."
        yield pre + "input_layernorm.weight", (h,), "norm"
        yield pre + "post_attention_layernorm.weight", (h,), "norm"
        attn = pre + "self_attn."
        if q_rank is None:
            yield attn + "q_proj.weight", (heads * (nope + rope), h), "linear"
        else:  # q through a low-rank bottleneck, normed in between
            yield attn + "q_a_proj.weight", (q_rank, h), "linear"
            yield attn + "q_a_layernorm.weight", (q_rank,), "norm"
            yield attn + "q_b_proj.weight", (heads * (nope + rope), q_rank), "linear"
        yield attn + "kv_a_proj_with_mqa.weight", (rank + rope, h), "linear"
        yield attn + "kv_a_layernorm.weight", (rank,), "norm"
        yield attn + "kv_b_proj.weight", (heads * (nope + v), rank), "linear"
        yield attn + "o_proj.weight", (h, heads * v), "linear"
        if i < x["first_k_dense_replace"]:
            yield from _dense_mlp(pre + "mlp.", h, x["dense_intermediate"])
            continue
        yield pre + "mlp.gate.weight", (p.num_experts, h), "router"
        if p.architecture == "deepseek_v3":
            yield pre + "mlp.gate.e_score_correction_bias", (p.num_experts,), "bias"
        for e in range(p.num_experts):
            yield from _dense_mlp(pre + f"mlp.experts.{e}.", h, p.expert_intermediate)
        yield from _dense_mlp(pre + "mlp.shared_experts.", h, p.shared_expert_intermediate)
    yield "model.norm.weight", (h,), "norm"
    yield "lm_head.weight", (p.vocab_size, h), "linear"


def _dense_mlp(pre: str, hidden: int, width: int):
    yield pre + "gate_proj.weight", (width, hidden), "linear"
    yield pre + "up_proj.weight", (width, hidden), "linear"
    yield pre + "down_proj.weight", (hidden, width), "linear"


def _weight_names(p: ModelPreset):
    """(name, shape, kind) for every tensor, in the checkpoint layout the hub's models use."""
    if p.architecture in ("deepseek_v2", "deepseek_v3"):
        yield from _deepseek_weights(p)
        return
    h, q, kv = p.hidden, p.heads * p.head_dim, p.kv_heads * p.head_dim
    yield "model.embed_tokens.weight", (p.vocab_size, h), "embed"
    for i in range(p.num_layers):
        pre = f"model.layers.{i}."
        yield pre + "input_layernorm.weight", (h,), "norm"
        yield pre + "post_attention_layernorm.weight", (h,), "norm"
        for name, shape in (("q_proj", (q, h)), ("k_proj", (kv, h)), ("v_proj", (kv, h)), ("o_proj", (h, q))):
            yield pre + f"self_attn.{name}.weight", shape, "linear"
        if p.architecture in ("qwen3_moe", "qwen3"):
            yield pre + "self_attn.q_norm.weight", (p.head_dim,), "norm"
            yield pre + "self_attn.k_norm.weight", (p.head_dim,), "norm"
        if p.architecture == "qwen2_moe":  # Qwen2 attention has q/k/v biases
            for name, width in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                yield pre + f"self_attn.{name}.bias", (width,), "bias"
            yield from _dense_mlp(pre + "mlp.shared_expert.", h, p.shared_expert_intermediate)
            yield pre + "mlp.shared_expert_gate.weight", (1, h), "router"
        if not p.num_experts:
            yield from _dense_mlp(pre + "mlp.", h, p.expert_intermediate)
            continue
        if p.architecture == "mixtral":
            moe, names = pre + "block_sparse_moe.", ("w1", "w3", "w2")
        else:
            moe, names = pre + "mlp.", ("gate_proj", "up_proj", "down_proj")
        yield moe + "gate.weight", (p.num_experts, h), "router"
        for e in range(p.num_experts):
            gate, up, down = names
            yield moe + f"experts.{e}.{gate}.weight", (p.expert_intermediate, h), "linear"
            yield moe + f"experts.{e}.{up}.weight", (p.expert_intermediate, h), "linear"
            yield moe + f"experts.{e}.{down}.weight", (h, p.expert_intermediate), "linear"
    yield "model.norm.weight", (h,), "norm"
    yield "lm_head.weight", (p.vocab_size, h), "linear"


def _random_weights(p: ModelPreset):
    """(name, tensor) for every weight of a random-weight preset, drawn from its seed in checkpoint order."""
    import torch

    dtype = getattr(torch, p.dtype)
    gen = torch.Generator().manual_seed(p.seed)
    for name, shape, kind in _weight_names(p):
        if kind == "norm":
            t = torch.ones(shape)
        elif kind == "bias":
            t = torch.randn(shape, generator=gen) * 0.02
        elif kind == "router":
            # Routers get a larger scale than other projections so expert choice depends on the token.
            t = torch.randn(shape, generator=gen) * (1.0 / shape[1] ** 0.5)
        else:
            t = torch.randn(shape, generator=gen) * (1.0 / shape[-1] ** 0.5)
        yield name, t.to(dtype).contiguous()


def save_weights(named_tensors, out: Path, shard_bytes: int = 1 << 30) -> None:
    """Safetensors shards plus the index, in the hub's layout (tensors kept in the order given)."""
    from safetensors.torch import save_file

    shards: list[dict] = [{}]
    size = 0
    for name, t in named_tensors:
        nbytes = t.numel() * t.element_size()
        if size + nbytes > shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    index = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        index.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1, sort_keys=True) + "\n")


def write_config(preset: ModelPreset, out: Path) -> int:
    """config.json and generation_config.json for `preset`, next to its tokenizer in `out`; returns the EOS id."""
    vocab = json.loads((out / "tokenizer.json").read_text())
    eos_id = next(t["id"] for t in vocab["added_tokens"] if t["content"] == EOS_TOKEN)
    config = hf_config(preset, eos_id)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}, indent=2) + "\n")
    return eos_id


def publish(preset: ModelPreset, tmp: Path, final: Path) -> Path:
    """Mark the build in `tmp` finished and move it into place (a half-written build is never trusted)."""
    (tmp / "sgl_layered_preset.json").write_text(json.dumps(asdict(preset), indent=2, sort_keys=True) + "\n")
    (tmp / "BUILD_OK").write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


class NotTrainedError(RuntimeError):
    """A trained preset was asked for before it was trained (training takes minutes, so it never starts unasked)."""


def build(name: str, force: bool = False) -> Path:
    """Build preset `name` into the cache (or reuse a finished build) and return its directory.

    A trained preset (its `extra` holds a "train" recipe) is never trained here: it is returned if it was trained
    before, otherwise NotTrainedError names the command that trains it (`python -m sgl_layered.models train NAME`),
    so no test, benchmark or demo starts a quarter-hour training run by surprise."""
    preset = get_preset(name)
    final = model_dir(preset)
    if "train" in preset.extra:
        if (final / "BUILD_OK").exists() and not force:
            return final
        state = "is not rebuilt by build()" if force else f"is not in the cache ({final})"
        raise NotTrainedError(f"{name} is a trained model and {state}; train it with "
                              f"`python -m sgl_layered.models train {name}{' --force' if force else ''}` "
                              f"(about 13 minutes on one CPU core)")
    if (final / "BUILD_OK").exists() and not force:
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train_tokenizer(preset.vocab_size, preset.seed, tmp)
    write_config(preset, tmp)
    save_weights(_random_weights(preset), tmp)
    return publish(preset, tmp, final)
