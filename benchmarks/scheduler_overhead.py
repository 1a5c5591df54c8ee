"""What the layered scheduler adds per iteration, in microseconds (CPU, this machine).

Part 1, the real engine (tiny model, `--max-running-requests 4` so the waiting queue stays deep): 10,000 one-token
requests are queued at once; every iteration's trace record holds the queue depth, the scheduling call's time
(SGLang's admission included) and our policy's share (building the SchedulerView and deciding the Step). Reported:
medians at about 10, 1,000 and 10,000 waiting requests, layered (paper rule and our policy) beside stock SGLang.

Part 2, micro-benchmarks of the per-iteration code around the model forward with the tensors it really handles:
the pass-through decoder-layer hook (decode-only iterations), the fused batch view, joining and splitting the
prompt/decode activations, the row-splitting attention's slicing.

    .venv/bin/python benchmarks/scheduler_overhead.py [--requests 10000]
Writes benchmarks/results/scheduler_overhead.json. Run it with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

DEPTHS = (10, 1000, 10000)


def timed(fn, repeat=2000):
    samples = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(repeat):
            fn()
        samples.append((time.perf_counter_ns() - t0) / repeat / 1e3)
    return statistics.median(samples)


async def _burst(engine, requests: int) -> list:
    """Queue every request while SGLang's scheduling is paused, then let it drain: the waiting queue starts at the
    full depth (sent one by one, requests would be served about as fast as the tokenizer hands them over)."""
    from sglang.srt.managers.io_struct import ContinueGenerationReqInput, PauseGenerationReqInput

    tm = engine.tokenizer_manager
    params = {"max_new_tokens": 1, "temperature": 0.0}
    await tm.pause_generation(PauseGenerationReqInput(mode="in_place"))
    tasks = [asyncio.ensure_future(engine.async_generate(input_ids=[7 + i % 1000], sampling_params=params))
             for i in range(requests)]
    while len(tm.rid_to_state) < requests:
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # the scheduler takes the last ones into its waiting queue
    await tm.continue_generation(ContinueGenerationReqInput())
    return await asyncio.gather(*tasks)


def engine_part(requests: int) -> dict:
    import sgl_layered
    from sgl_layered import cpu
    from sgl_layered.models import build

    model = str(build("tiny-qwen3-moe"))
    modes = {"stock": {}, "layered-paper": dict(enable_layered_prefill=True),
             "layered-ours": dict(enable_layered_prefill=True, layered_prefill_policy="adaptive")}
    out = {}
    for mode, kw in modes.items():
        trace = tempfile.mkstemp(suffix=".jsonl")[1]
        engine = sgl_layered.Engine(model_path=model, layered_prefill_trace=trace, max_running_requests=4,
                                    disable_overlap_schedule=True, **kw, **cpu.machine_engine_kwargs())
        try:
            engine.loop.run_until_complete(_burst(engine, requests))
            engine.get_server_info()
        finally:
            engine.shutdown()
        rows = [json.loads(line) for line in open(trace) if line.strip()]
        os.unlink(trace)
        out[mode] = {}
        for depth in DEPTHS:
            near = [r["scheduling"] for r in rows if abs(r["scheduling"]["waiting"] - depth) <= max(2, depth // 10)]
            out[mode][str(depth)] = {
                "iterations": len(near),
                "scheduling_us_median": statistics.median(s["us"] for s in near) if near else None,
                "policy_us_median": statistics.median(s["policy_us"] for s in near) if near else None}
    return out


def micro_part(prompt_rows: int, decode_rows: int, hidden: int, layers: int) -> dict:
    from sgl_layered import cpu
    cpu.apply_env()
    import torch
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

    from sgl_layered.adapter import fused_pass
    from sgl_layered.adapter.attention import RowSplitAttention
    from sgl_layered.adapter.views import fused_view
    from sgl_layered.runtime.stash import Activations, join, split

    L, B, H, N = prompt_rows, decode_rows, hidden, layers
    results = {}

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
        results["fused_view_us"] + results["join_split_us"]
        + group_layers * results["row_split_attention_per_layer_us"]
        + (N - group_layers) * results["hook_passthrough_per_layer_us"])
    results["decode_only_iteration_total_us"] = N * results["hook_passthrough_per_layer_us"]
    results["shape"] = {"prompt_rows": L, "decode_rows": B, "hidden": H, "layers": N, "group_layers": group_layers}
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--prompt-rows", type=int, default=512)
    ap.add_argument("--decode-rows", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()
    from sgl_layered import cpu
    from sim_report import git_state
    os.environ.update(cpu.machine_env())
    results = {"engine": engine_part(args.requests),
               "micro": micro_part(args.prompt_rows, args.decode_rows, args.hidden, args.layers),
               "note": "CPU, 2 cores; medians; engine part: tiny-qwen3-moe, one-token requests, max_running_requests 4",
               **git_state()}
    out = os.path.join(os.path.dirname(__file__), "results", "scheduler_overhead.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
