"""The embedded checkpoints: deterministic, loadable, and with a tokenizer whose every token is visible."""

import hashlib
import json

import pytest

from sgl_layered.models import PRESETS, build, get_preset
from sgl_layered.models.tokenizer import invisible_tokens


def _digest(path):
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_LAYERED_CACHE", str(tmp_path))
    return tmp_path


def test_build_is_deterministic_and_reused(fresh_cache):
    a = build("tiny-mixtral")
    first = _digest(a)
    assert build("tiny-mixtral") == a  # a finished build is reused untouched
    assert _digest(a) == first
    b = build("tiny-mixtral", force=True)
    assert b == a and _digest(b) == first  # rebuilding from the same seed gives the same bytes


@pytest.mark.parametrize("name", ["tiny-qwen3-moe", "tiny-mixtral"])
def test_checkpoint_matches_preset(fresh_cache, name):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    path = build(name)
    p = get_preset(name)
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.num_hidden_layers == p.num_layers and cfg.hidden_size == p.hidden
    assert cfg.num_experts_per_tok == p.top_k
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    expert_keys = [k for k in index if ".experts." in k]
    assert len(expert_keys) == p.num_layers * p.num_experts * 3
    with safe_open(str(path / next(iter(index.values()))), "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
    assert tuple(emb.shape) == (p.vocab_size, p.hidden)
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == p.vocab_size
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and cfg.eos_token_id == tok.eos_token_id


def test_every_token_decodes_to_visible_text(fresh_cache):
    path = build("tiny-qwen3-moe")
    assert invisible_tokens(path) == []


def test_bench_preset_is_expert_heavy():
    # About 0.8 GB of expert weights in bf16: far larger than CPU caches, as the benchmarks need.
    p = PRESETS["bench-qwen3-moe"]
    total = p.num_layers * p.num_experts * p.expert_bytes()
    assert 700e6 < total < 1.2e9


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown embedded model"):
        get_preset("huge-model")


def test_gpu_presets_use_head_dims_gpu_kernels_serve(fresh_cache):
    from transformers import AutoConfig

    gpu = [p for name, p in PRESETS.items() if name.startswith("gpu-")]
    assert gpu and all(p.head_dim in (64, 128) for p in gpu)  # FlashInfer and fa3 builds all carry these
    cfg = AutoConfig.from_pretrained(build("gpu-mixtral"))
    assert cfg.hidden_size // cfg.num_attention_heads == 128 or getattr(cfg, "head_dim", None) == 128
