"""--layered-prefill-cpu-fast-extend: torch_native's extend attention with the new rows' queries only gives what
SGLang's full-length computation gives (decode rows in a mixed batch, chunks with a prefix, GQA, no prefix), is
installed only with the flag, and is refused outside SGLang's CPU engine with torch_native."""

from __future__ import annotations

import pytest
import torch

from sgl_layered.adapter import cpu_ops, hooks, settings
from sgl_layered.core.config import LayeredConfig, LayeredConfigError

TARGET = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_extend"


def _batch(seqs, heads=4, kv_heads=2, dim=16, seed=0):
    """A paged KV cache holding each request's sequence at scattered slots, and the new rows' queries."""
    g = torch.Generator().manual_seed(seed)
    total = sum(length for length, _ in seqs)
    slots = torch.randperm(total + 7, generator=g)[:total]
    k_cache, v_cache = torch.randn(total + 7, kv_heads, dim, generator=g), torch.randn(total + 7, kv_heads, dim, generator=g)
    req_to_token = torch.zeros(len(seqs) + 2, 256, dtype=torch.long)
    pool = torch.tensor([i + 2 for i in range(len(seqs))][::-1])  # request slots not in batch order
    at = 0
    for i, (length, _) in enumerate(seqs):
        req_to_token[pool[i], :length] = slots[at:at + length]
        at += length
    seq_lens = torch.tensor([length for length, _ in seqs])
    new = torch.tensor([rows for _, rows in seqs])
    query = torch.randn(int(new.sum()), heads, dim, generator=g)
    return dict(query=query, k_cache=k_cache, v_cache=v_cache, req_to_token=req_to_token, req_pool_indices=pool,
                seq_lens=seq_lens, extend_prefix_lens=seq_lens - new, extend_seq_lens=new)


@pytest.mark.parametrize("seqs", [
    [(90, 1), (40, 1), (130, 25)],  # decode rows of a mixed batch beside a chunk with a prefix
    [(60, 60), (7, 7)],  # prompts without prefix
    [(200, 64), (1, 1), (65, 1)],  # a long prefix chunk, a one-token prompt, a decode row
])
def test_new_rows_only_equals_sglangs_extend(seqs):
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    backend = TorchNativeAttnBackend.__new__(TorchNativeAttnBackend)  # the method reads no backend state
    original = TorchNativeAttnBackend._run_sdpa_forward_extend
    b = _batch(seqs)
    args = (b["query"], None, b["k_cache"], b["v_cache"], b["req_to_token"], b["req_pool_indices"], b["seq_lens"],
            b["extend_prefix_lens"], b["extend_seq_lens"])
    kwargs = dict(scaling=0.25, enable_gqa=True, causal=True)
    theirs = original(backend, *args[:1], torch.zeros_like(b["query"]), *args[2:], **kwargs)
    ours = cpu_ops.extend_new_rows_only(original, backend, *args[:1], torch.zeros_like(b["query"]), *args[2:], **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_sliding_window_keeps_sglangs_path():
    calls = []
    b = _batch([(30, 5)])
    out = cpu_ops.extend_new_rows_only(lambda *a, **k: calls.append(k) or "sglang", None, b["query"],
                                       torch.zeros_like(b["query"]), b["k_cache"], b["v_cache"], b["req_to_token"],
                                       b["req_pool_indices"], b["seq_lens"], b["extend_prefix_lens"],
                                       b["extend_seq_lens"], causal=True, sliding_window_size=8)
    assert out == "sglang" and calls[0]["sliding_window_size"] == 8


def test_installed_only_with_the_flag_on_the_cpu_engine(monkeypatch):
    (hook,) = [h for h in hooks.HOOKS if h.target == TARGET]
    monkeypatch.setenv("SGLANG_USE_CPU_ENGINE", "1")
    assert hook.wanted(LayeredConfig(layered_prefill_cpu_fast_extend=True))
    assert not hook.wanted(LayeredConfig(enable_layered_prefill=True)) and not hook.wanted(None)
    assert LayeredConfig(layered_prefill_cpu_fast_extend=True).needs_plugin
    monkeypatch.setenv("SGLANG_USE_CPU_ENGINE", "0")
    assert not hook.wanted(LayeredConfig(layered_prefill_cpu_fast_extend=True))


@pytest.mark.parametrize("engine, backend", [("0", None), ("1", "triton")])
def test_refused_outside_the_cpu_engines_torch_native(monkeypatch, engine, backend):
    monkeypatch.setenv("SGLANG_USE_CPU_ENGINE", engine)
    values = {"attention_backend": backend, "model_path": None}
    with pytest.raises(LayeredConfigError, match="--layered-prefill-cpu-fast-extend"):
        settings.validate_launch(LayeredConfig(layered_prefill_cpu_fast_extend=True), values.get)
