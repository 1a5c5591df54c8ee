"""The headline comparison (ablation.py's default sweep: SGLang default, chunked + mixed 512, layered auto) on the
trained checkpoint, with real English prompts, so that expert traffic follows a trained router.

Same workloads (lengths), rates, arrivals and SLOs as the default sweep's first rate; the prompts are token windows of
the held-out fortunes (every 20th fortune, never trained on), cut at seeded offsets to each request's length, instead
of random token ids (a trained router routes random ids unlike text). Routings: the model's own (trained) router, and
the calibrated Zipf routing for comparison.

    .venv/bin/python -m sgl_layered.models train trained-qwen3-moe     # once (minutes)
    .venv/bin/python benchmarks/trained_headline.py [--requests 10]     # writes results/trained/headline/
    .venv/bin/python benchmarks/trained_headline.py --report-only     # its expert-bytes tables again
    .venv/bin/python benchmarks/report_table.py benchmarks/results/trained/headline/results.json   # latency table
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

MODEL = "trained-qwen3-moe"


def text_prompts(model_path: str):
    """make_prompts(lengths, vocab, seed) over held-out text: each prompt a window of the held-out token stream."""
    from sgl_layered.models import train as T

    _, held = T.split(T.fortunes())
    stream = T.token_stream(model_path, [t + T.DOC_SEP for _, t in held]).tolist()

    def make_prompts(lengths, vocab, seed):
        rng = random.Random(seed)
        out = []
        for p, _ in lengths:
            if p > len(stream):
                raise ValueError(f"prompt of {p} tokens is longer than the held-out text ({len(stream)} tokens)")
            start = rng.randrange(0, len(stream) - p + 1)
            out.append(stream[start:start + p])
        return out

    return make_prompts


def expert_bounds(out_dir: str) -> dict:
    """Per routing and mode, over its whole trace (both workloads; the warm-up request included): expert bytes loaded
    and for the prompts, the prompt floor and the reload factor (expert_traffic.bounds)."""
    import glob
    import gzip
    import json

    from sgl_layered.analysis import expert_traffic

    out = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "trace-*.jsonl*"))):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        name = os.path.basename(path).split(".")[0][len("trace-"):]
        out[name] = expert_traffic.bounds(rows)
    with open(os.path.join(out_dir, "expert_bounds.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def report(out_dir: str) -> None:
    """Print the README's expert-bytes table (MB the prompts added, per routing, workload and mode) and the reload
    factors, from a finished run's results.json and traces."""
    import json

    with open(os.path.join(out_dir, "results.json")) as f:
        runs = json.load(f)["runs"]
    modes = list(dict.fromkeys(r["mode"] for r in runs))
    cells = {(r["routing"], r["workload"], r["mode"]): r["experts"] for r in runs}
    print("| routing | workload | " + " | ".join(modes) + " |\n|---|---|" + "---|" * len(modes))
    for routing, workload in dict.fromkeys((r["routing"], r["workload"]) for r in runs):
        tokens = next(cells[(routing, workload, m)]["prefill_tokens"] for m in modes if (routing, workload, m) in cells)
        row = [f"{cells[(routing, workload, m)]['prefill_bytes'] / 1e6:,.0f} MB" if (routing, workload, m) in cells
               else "–" for m in modes]
        print(f"| {routing} | {workload} ({tokens:,} prompt tokens) | " + " | ".join(row) + " |")
    for name, b in expert_bounds(out_dir).items():
        print(f"{name}: prompt expert bytes {b['prompt'] / 1e6:.0f} MB, prompt floor {b['prompt_floor'] / 1e6:.0f} MB, "
              f"reload factor {b['reload_factor']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "results", "trained", "headline"))
    ap.add_argument("--requests", type=int, default=None, help="requests per run (default: the default sweep's)")
    ap.add_argument("--modes", default="sglang-default,chunked-512,layered-auto")
    ap.add_argument("--calibrated-modes", default="chunked-512,layered-auto")
    ap.add_argument("--report-only", action="store_true", help="print the tables of a finished run in --out")
    args = ap.parse_args()
    if args.report_only:
        report(args.out)
        return

    import ablation
    import load
    from sgl_layered.models import build

    base = ablation.default_plan()
    routings = {"model": args.modes.split(",")}
    if args.calibrated_modes:
        routings["calibrated"] = args.calibrated_modes.split(",")
    plan = replace(base, model=MODEL, routings=routings, rates={w: r[:1] for w, r in base.rates.items()},
                   requests=args.requests or base.requests, sweep_rates_for=[])
    load.make_prompts = text_prompts(str(build(MODEL)))  # ablation.run imports it from `load` when it runs
    ablation.run(plan, args.out)
    report(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
