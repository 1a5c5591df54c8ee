"""What the layered scheduler adds per iteration, in microseconds (CPU, this machine).

Measures our own per-iteration code with the tensors it really handles, not the model's forward:
  * policy: `may_admit` + `plan` (pure Python, every iteration while a cohort is in flight);
  * decode-only iteration: the pass-through decoder-layer hook, once per layer;
  * layered iteration: building the fused batch view, joining and splitting the prompt/decode activations,
    and the row-splitting attention's slicing and concatenation (once per layer of the group).

    .venv/bin/python benchmarks/scheduler_overhead.py [--prompt-rows 512] [--decode-rows 32] [--hidden 512]
Writes benchmarks/results/scheduler_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def timed(fn, repeat=2000):
    samples = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(repeat):
            fn()
        samples.append((time.perf_counter_ns() - t0) / repeat / 1e3)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-rows", type=int, default=512)
    ap.add_argument("--decode-rows", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()

    from sgl_layered import cpu
    cpu.apply_env()
    import torch
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

    from sgl_layered.adapter import fused_pass
    from sgl_layered.adapter.attention import RowSplitAttention
    from sgl_layered.adapter.views import fused_view
    from sgl_layered.core.policy import CohortState, PaperPolicy, SchedulerView
    from sgl_layered.core.partition import split_layers
    from sgl_layered.runtime.stash import Activations, join, split

    L, B, H, N = args.prompt_rows, args.decode_rows, args.hidden, args.layers
    policy = PaperPolicy(groups=None)
    groups = tuple(split_layers(N, 2))
    view = SchedulerView(N, B, 3, (CohortState(1, L, groups, 0),))
    results = {"policy_us": timed(lambda: (policy.may_admit(view), policy.plan(view)))}

    def original(layer, positions, hidden, fb):
        return hidden

    h = torch.zeros(1)
    results["hook_passthrough_per_layer_us"] = timed(lambda: fused_pass.decoder_layer_hook(original, None, None, h, None))

    def batch(n_req, tokens, mode):
        seq = torch.full((n_req,), tokens // n_req, dtype=torch.int64)
        return ForwardBatch(forward_mode=mode, batch_size=n_req, input_ids=torch.zeros(tokens, dtype=torch.int64),
                            req_pool_indices=torch.arange(n_req), seq_lens=seq, out_cache_loc=torch.arange(tokens),
                            seq_lens_sum=int(seq.sum()), seq_lens_cpu=seq, positions=torch.arange(tokens),
                            extend_num_tokens=tokens, extend_seq_lens=seq, extend_prefix_lens=torch.zeros_like(seq),
                            extend_seq_lens_cpu=seq.tolist(), extend_prefix_lens_cpu=[0] * n_req)

    prompt, decode = batch(4, L, ForwardMode.EXTEND), batch(B, B, ForwardMode.DECODE)
    results["fused_view_us"] = timed(lambda: fused_view(prompt, decode), repeat=500)
    a = Activations(torch.randn(L, H), torch.randn(L, H), "plain")
    d = Activations(torch.randn(B, H), torch.randn(B, H), "plain")
    results["join_split_us"] = timed(lambda: split(join(a, d), L), repeat=500)

    class Backend:
        token_to_kv_pool = req_to_token_pool = None

        def forward(self, q, k, v, layer, fb, save):
            return q

    attn = RowSplitAttention(Backend(), prompt, Backend(), decode)
    q = torch.randn(L + B, H)
    results["row_split_attention_per_layer_us"] = timed(lambda: attn.forward(q, q, q, None, None), repeat=500)
    group_layers = N // 2
    results["layered_iteration_total_us"] = (
        results["policy_us"] + results["fused_view_us"] + results["join_split_us"]
        + group_layers * results["row_split_attention_per_layer_us"]
        + (N - group_layers) * results["hook_passthrough_per_layer_us"])
    results["decode_only_iteration_total_us"] = N * results["hook_passthrough_per_layer_us"]
    results["shape"] = {"prompt_rows": L, "decode_rows": B, "hidden": H, "layers": N, "group_layers": group_layers}
    results["note"] = ("CPU, 2 cores; per-iteration cost of sgl-layered's own code around the model forward "
                       "(the forward itself is the model's work in any mode)")
    out = os.path.join(os.path.dirname(__file__), "results", "scheduler_overhead.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    for k, v in results.items():
        print(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
