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
        if q.shape[0] != n + int(self.decode_batch.input_ids.shape[0]):
            raise RuntimeError(f"fused attention got {q.shape[0]} rows, expected {n} prompt + "
                               f"{self.decode_batch.input_ids.shape[0]} decode rows")
        prompt = self.prefill_backend.forward(q[:n], k[:n], v[:n], layer, self.prefill_batch,
                                              save_kv_cache, **kwargs)
        decode = self.decode_backend.forward(q[n:], k[n:], v[n:], layer, self.decode_batch,
                                             save_kv_cache, **kwargs)
        return torch.cat([prompt.reshape(n, -1), decode.reshape(decode.shape[0], -1)])
