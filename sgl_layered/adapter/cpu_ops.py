"""CPU-engine fixes that let SGLang 0.5.23 run two supported models at all. hooks.HOOKS installs them only in
SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1), so a GPU launch keeps SGLang's own code.

Qwen2-MoE gates its shared expert with `fused_gate_sigmoid_mul(_add)`, Triton kernels that cannot run on a
CPU. `gate_sigmoid_mul(_add)` compute the same thing (per token: sigmoid(hidden . gate_weight) *
shared_output, in fp32, optionally added to the routed-expert output in place).

Deterministic inference (`--enable-deterministic-inference`, which makes `sampling_seed` decide a request's
samples whatever it is batched with): SGLang accepts only GPU attention backends for it and turns on batch-invariant
GPU kernels, which refuse a CPU. `allow_deterministic_inference` admits torch_native (whose CPU ops do not split
the KV by batch size) and `no_batch_invariant_kernels` skips the GPU-only kernels: seeded sampling then works in
SGLang's CPU engine, for stock and layered alike (the seeded hash is the sgl_kernel CPU stand-in's).

DeepSeek-V2 (MLA attention): torch_native has no entry in SGLang's MLA attention-method registry, so it gets
the Triton backend's choice, which sends a prefill without cached prefix to the MHA path (`attn_mha` with
decompressed per-head k/v and save_kv_cache=False). torch_native's extend attention reads K/V from the
latent KV pool, not the k/v it is passed, so that path fails. `mla_method_for_torch_native` gives
torch_native the absorbed MLA path for every forward mode: the latent KV is written and read in the one
format decode uses, and every row gets the same attention math (exact vs HF transformers on a tiny model).

Extend attention on the CPU engine (`--layered-prefill-cpu-fast-extend`, a benchmark setting, any mode):
torch_native's extend builds, per request, a query as long as the whole sequence, runs causal attention over it
and keeps the new rows. A decode row inside a mixed batch (`--enable-mixed-chunk`) then costs prefix-length squared
work, and each chunk of a chunked prefill recomputes every row of its prefix. `extend_new_rows_only` computes the
new rows' queries alone against the whole sequence's keys, with the causal mask shifted by the prefix: the same
attention, at the cost GPU backends pay. Measured on this CPU: 21 decode rows of ~450 tokens beside a 43-token chunk,
one layer, 77-128 ms -> 4.5 ms, outputs equal to 2e-7.
"""

from __future__ import annotations

import torch


def _gated(hidden_states: torch.Tensor, gate_weight: torch.Tensor, shared_output: torch.Tensor) -> torch.Tensor:
    gate = torch.sigmoid(hidden_states.float() @ gate_weight.float())
    return gate.unsqueeze(-1) * shared_output.float()


def gate_sigmoid_mul(hidden_states, gate_weight, shared_output):
    return _gated(hidden_states, gate_weight, shared_output).to(shared_output.dtype)


def gate_sigmoid_mul_add(hidden_states, gate_weight, shared_output, final_hidden_states) -> None:
    final_hidden_states.copy_(final_hidden_states.float() + _gated(hidden_states, gate_weight, shared_output))


def allow_deterministic_inference() -> None:
    """Let SGLang's CPU engine run --enable-deterministic-inference with torch_native, radix cache kept (idempotent;
    through SGLang's own extension lists)."""
    from sglang.srt.arg_groups import choices

    if "torch_native" not in choices.DETERMINISTIC_ATTENTION_BACKEND_CHOICES:
        choices.add_deterministic_attention_backend_choices(["torch_native"])
    if "torch_native" not in choices.RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND:
        choices.add_radix_supported_deterministic_attention_backend_choices(["torch_native"])


def no_batch_invariant_kernels(original, runner):
    """AROUND hook on ModelRunner.maybe_enable_batch_invariant_mode, CPU engine only: SGLang's batch-invariant
    kernels need a GPU and raise on a CPU; the CPU engine runs without them."""
    return None


def mla_method_for_torch_native(original, registry, backend_name):
    """AROUND hook on AttentionBackendRegistry.get_handler: torch_native dispatches every forward to the absorbed
    MLA path (see the module docstring); other backends keep SGLang's handler."""
    if backend_name != "torch_native":
        return original(registry, backend_name)
    from sglang.srt.models.deepseek_common.attention_backend_handler import _dispatch_mla_subtype

    return _dispatch_mla_subtype


def extend_new_rows_only(original, backend, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                         extend_prefix_lens, extend_seq_lens, encoder_lens=None, scaling=None, enable_gqa=False,
                         causal=False, is_cross_attn=False, sliding_window_size=None):
    """AROUND hook on TorchNativeAttnBackend._run_sdpa_forward_extend, installed only with
    --layered-prefill-cpu-fast-extend (see the module docstring). Encoder-decoder and sliding-window attention
    keep SGLang's path."""
    if encoder_lens is not None or is_cross_attn or (sliding_window_size is not None and sliding_window_size > -1):
        return original(backend, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                        extend_prefix_lens, extend_seq_lens, encoder_lens=encoder_lens, scaling=scaling,
                        enable_gqa=enable_gqa, causal=causal, is_cross_attn=is_cross_attn,
                        sliding_window_size=sliding_window_size)
    from torch.nn.functional import scaled_dot_product_attention

    heads_first = query.movedim(0, 1)  # [heads, tokens, dim]
    start = 0
    for i in range(seq_lens.shape[0]):
        rows, length, prefix = int(extend_seq_lens[i]), int(seq_lens[i]), int(extend_prefix_lens[i])
        slots = req_to_token[req_pool_indices[i], :length]
        key, value = k_cache[slots].movedim(0, 1), v_cache[slots].movedim(0, 1)
        q = heads_first[:, start:start + rows]
        if key.dtype != q.dtype:
            key, value = key.to(q.dtype), value.to(q.dtype)
        # New row r sits at position prefix + r and sees keys 0..prefix + r (a single row sees every key).
        mask = torch.ones(rows, length, dtype=torch.bool, device=q.device).tril(prefix) if causal and rows > 1 else None
        out = scaled_dot_product_attention(q.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0), attn_mask=mask,
                                           scale=scaling, enable_gqa=enable_gqa)
        output[start:start + rows] = out.squeeze(0).movedim(1, 0)
        start += rows
    return output
