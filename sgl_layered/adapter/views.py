"""The ForwardBatch the layers of the active group see during a fused pass.

It describes the cohort's prompt rows followed by the decode rows as one MIXED batch (decode rows as
one-token extends), the same shape SGLang's own mixed-chunk batches have, so any layer code that reads
batch-level fields sees a consistent picture. Attention does not use its row metadata: the row-splitting
backend (attention.py) runs each part with its own sub-batch.
"""

from __future__ import annotations

import copy

import torch
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode


def _cat(a, b, dtype=None):
    if a is None or b is None:
        return None
    dtype = dtype or a.dtype
    return torch.cat([a.to(dtype), b.to(dtype)])


def fused_view(prompt: ForwardBatch, decode: ForwardBatch) -> ForwardBatch:
    view = copy.copy(prompt)
    n_dec = decode.batch_size
    dec_prefix = decode.seq_lens - 1
    view.forward_mode = ForwardMode.MIXED
    view.batch_size = prompt.batch_size + n_dec
    view.input_ids = _cat(prompt.input_ids, decode.input_ids)
    view.positions = _cat(prompt.positions, decode.positions)
    view.out_cache_loc = _cat(prompt.out_cache_loc, decode.out_cache_loc)
    view.req_pool_indices = _cat(prompt.req_pool_indices, decode.req_pool_indices)
    view.seq_lens = _cat(prompt.seq_lens, decode.seq_lens)
    view.seq_lens_cpu = _cat(prompt.seq_lens_cpu, decode.seq_lens_cpu)
    view.seq_lens_sum = int(prompt.seq_lens_sum) + int(decode.seq_lens_sum)
    view.extend_num_tokens = int(prompt.extend_num_tokens) + n_dec
    view.extend_seq_lens = _cat(prompt.extend_seq_lens, torch.ones_like(dec_prefix))
    view.extend_prefix_lens = _cat(prompt.extend_prefix_lens, dec_prefix)
    if view.extend_seq_lens is not None:
        view.extend_start_loc = torch.cumsum(view.extend_seq_lens, 0) - view.extend_seq_lens
    if prompt.extend_seq_lens_cpu is not None:
        view.extend_seq_lens_cpu = list(prompt.extend_seq_lens_cpu) + [1] * n_dec
    if prompt.extend_prefix_lens_cpu is not None and decode.seq_lens_cpu is not None:
        view.extend_prefix_lens_cpu = list(prompt.extend_prefix_lens_cpu) + (decode.seq_lens_cpu - 1).tolist()
    # Row-count bounds that attention and MoE use to skip padding: every fused row is real.
    total = int(view.input_ids.shape[0])
    view.global_num_token_non_padded_cpu = total
    if prompt.global_num_token_non_padded is not None:
        view.global_num_token_non_padded = torch.tensor(total, dtype=torch.int32, device=view.input_ids.device)
        view.set_local_num_token_non_padded(sharded=view.attn_tp_sequence_sharded)
    # Fields only the sampler / logits processor read: the view never reaches them.
    view.sampling_info = None
    view.return_logprob = False
    view.extend_logprob_start_lens_cpu = None
    view.rids = None
    view.residual_stream = None
    return view
