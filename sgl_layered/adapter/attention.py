"""Row-splitting attention for the fused pass.

Inside the active layer group one forward carries the cohort's prompt rows followed by the decode rows.
Everything but attention treats them as one batch (one QKV GEMM, one MoE call). Attention is the one op
whose metadata differs: the prompt rows need extend metadata (causal over their own prompt plus any
cached prefix), the decode rows decode metadata. This backend splits q/k/v by rows and hands each part to
an attention backend instance whose metadata was prepared for exactly that sub-batch; both write their
own KV slots. Any SGLang backend (torch_native, triton, flashinfer) plugs in unchanged.
"""

from __future__ import annotations

import torch

# Per-row operands some backends' callers pass besides q/k/v (MLA's rope parts on the absorbed path with fa3 or
# FlashInfer; FP8 descales): each half gets its own rows. The same names SGLang narrows per token for its own splits.
PER_ROW_KWARGS = ("q_rope", "k_rope", "topk_indices", "rel_bias", "q_descale", "k_descale", "v_descale")


def _split_kwargs(kwargs: dict, rows: int, total: int):
    prompt, decode = dict(kwargs), dict(kwargs)
    for name, value in kwargs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != total:
            continue
        if name not in PER_ROW_KWARGS:
            raise RuntimeError(f"fused attention cannot split the per-row argument {name!r} between prompt and "
                               "decode rows (a model or backend the row split was not built for)")
        prompt[name], decode[name] = value[:rows], value[rows:]
    return prompt, decode


def _rows(x, rows: slice):
    return None if x is None else x[rows]  # MLA's absorbed path may pass no separate v


class RowSplitAttention:
    def __init__(self, prefill_backend, prefill_batch, decode_backend, decode_batch):
        self.prefill_backend, self.prefill_batch = prefill_backend, prefill_batch
        self.decode_backend, self.decode_batch = decode_backend, decode_batch
        self.prefill_rows = int(prefill_batch.input_ids.shape[0])
        # Read through get_token_to_kv_pool() / get_req_to_token_pool() by some layers.
        self.token_to_kv_pool = decode_backend.token_to_kv_pool
        self.req_to_token_pool = decode_backend.req_to_token_pool
        # Read by DeepSeek's MLA method dispatch (the fused view is a MIXED batch: the prefill name is used).
        self.prefill_attention_backend_str = getattr(prefill_backend, "prefill_attention_backend_str", None)
        self.decode_attention_backend_str = getattr(decode_backend, "decode_attention_backend_str", None)

    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        n = self.prefill_rows
        total = n + int(self.decode_batch.input_ids.shape[0])
        if q.shape[0] != total:
            raise RuntimeError(f"fused attention got {q.shape[0]} rows, expected {n} prompt + {total - n} decode rows")
        prompt_kwargs, decode_kwargs = _split_kwargs(kwargs, n, total)
        head, tail = slice(0, n), slice(n, None)
        prompt = self.prefill_backend.forward(q[head], _rows(k, head), _rows(v, head), layer, self.prefill_batch,
                                              save_kv_cache, **prompt_kwargs)
        decode = self.decode_backend.forward(q[tail], _rows(k, tail), _rows(v, tail), layer, self.decode_batch,
                                             save_kv_cache, **decode_kwargs)
        return torch.cat([prompt.reshape(n, -1), decode.reshape(decode.shape[0], -1)])
