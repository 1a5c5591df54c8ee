"""GPU kernel check: one layered MoE pass against the chunked passes, with SGLang's Triton fused-MoE kernel.

At Qwen3-30B-A3B MoE-layer shapes (128 experts, top-8, hidden 2048, expert intermediate 768, bf16) it times,
for L in {2k, 8k} prompt rows, C in {512, 2048} chunk sizes and B in {32, 64} decode rows:
  * layered: one fused_experts call over L + B rows;
  * chunked: ceil(L / C) calls over C + B rows each (the decode rows ride along, as with mixed chunks);
and reports time, the expert bytes each variant must stream (distinct experts touched per call x bytes per
expert) and the achieved HBM bandwidth. Routing is random (near-uniform). Runs in well under 5 minutes.

    python benchmarks/gpu_moe_kernel_check.py [--sglang-src DIR] [--out results.json]

Needs a CUDA GPU, torch and triton, and SGLang 0.5.23's Python sources: the installed package, or --sglang-src
pointing at the unpacked wheel (`unzip sglang-0.5.23-*.whl -d DIR`), the only thing to carry to a GPU machine
without SGLang. Without CUDA it prints why it is skipped and exits 0. A missing import is reported, not worked
around.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

SHAPE = {"model": "Qwen3-30B-A3B", "experts": 128, "top_k": 8, "hidden": 2048, "intermediate": 768}
PROMPT_ROWS = [2048, 8192]
CHUNKS = [512, 2048]
DECODE_ROWS = [32, 64]


def load_fused_experts(sglang_src):
    if sglang_src:
        sys.path.insert(0, sglang_src)
    try:
        from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig
        from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe import fused_experts
        from sglang.srt.layers.moe.topk import StandardTopKOutput
    except ImportError as e:
        raise SystemExit(f"cannot import SGLang's Triton fused MoE ({e}); pass --sglang-src with the unpacked "
                         "sglang 0.5.23 wheel and carry the missing module") from e
    return fused_experts, MoeRunnerConfig, StandardTopKOutput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sglang-src", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device here (this check times SGLang's Triton fused-MoE kernel on a GPU)")
        return
    fused_experts, MoeRunnerConfig, StandardTopKOutput = load_fused_experts(args.sglang_src)
    torch.manual_seed(0)
    dev = torch.device("cuda")
    E, K, H, I = SHAPE["experts"], SHAPE["top_k"], SHAPE["hidden"], SHAPE["intermediate"]
    w1 = torch.randn(E, 2 * I, H, device=dev, dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(E, H, I, device=dev, dtype=torch.bfloat16) * 0.02
    bytes_per_expert = (w1[0].numel() + w2[0].numel()) * 2
    config = MoeRunnerConfig(num_experts=E, num_local_experts=E, hidden_size=H, intermediate_size_per_partition=I,
                             top_k=K, inplace=False)

    def call(rows):
        x = torch.randn(rows, H, device=dev, dtype=torch.bfloat16)
        logits = torch.randn(rows, E, device=dev, dtype=torch.float32)
        weights, ids = torch.topk(torch.softmax(logits, dim=1), K, dim=1)
        topk = StandardTopKOutput(weights.to(torch.float32), ids.to(torch.int32), logits)
        distinct = int(torch.unique(ids).numel())
        return (lambda: fused_experts(x, w1, w2, topk, config)), distinct

    def timed(fns):
        for fn in fns:
            fn()  # compile / warm up
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            for fn in fns:
                fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / args.iters / 1e3

    results = []
    t0 = time.time()
    for L in PROMPT_ROWS:
        for B in DECODE_ROWS:
            layered_fn, layered_distinct = call(L + B)
            layered_s = timed([layered_fn])
            for C in CHUNKS:
                n = math.ceil(L / C)
                chunks = [call(C + B) for _ in range(n)]
                chunked_s = timed([fn for fn, _ in chunks])
                chunked_bytes = sum(d for _, d in chunks) * bytes_per_expert
                row = {"L": L, "B": B, "C": C, "chunks": n,
                       "layered_ms": layered_s * 1e3, "chunked_ms": chunked_s * 1e3,
                       "layered_expert_GB": layered_distinct * bytes_per_expert / 1e9,
                       "chunked_expert_GB": chunked_bytes / 1e9,
                       "layered_GBps": layered_distinct * bytes_per_expert / layered_s / 1e9,
                       "chunked_GBps": chunked_bytes / chunked_s / 1e9,
                       "time_ratio_chunked_over_layered": chunked_s / layered_s}
                results.append(row)
                print(json.dumps(row))
    report = {"shape": SHAPE, "dtype": "bfloat16", "routing": "random (near-uniform)",
              "device": torch.cuda.get_device_name(), "wall_s": time.time() - t0, "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
