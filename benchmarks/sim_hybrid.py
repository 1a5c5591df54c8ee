"""Chunk x layer hybrid in the simulator (issue 4 d): prompts longer than one layered pass's token cap.

    .venv/bin/python benchmarks/sim_hybrid.py [--requests 1000] [--out benchmarks/results/sim]

The paper's rule runs a prompt of L tokens in G = clamp(ceil(L/512), 1, N) groups: past 512 x N tokens even one
layer per group carries more than a 512-token chunk's work, and the iteration (every decode token's gap) grows
with L. The hybrid (--layered-prefill-chunk-tokens C) admits such a prompt C tokens at a time, KV allocated per
chunk, and runs every chunk layered. Synthetic arXiv-like lengths (long tail) on 2xH100 (datasheet), Zipf 1.3
routing; same seeded requests for every mode. Prints and writes a markdown table and JSON.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sgl_layered.analysis import workloads  # noqa: E402
from sim_report import DEFAULT_OUT, run_and_save  # noqa: E402
from sgl_layered.core.roofline import CostModel  # noqa: E402
from sgl_layered.core.hardware import H100  # noqa: E402
from sgl_layered.core.shapes import MODELS  # noqa: E402
from sgl_layered.sim.sweep import Scenario, simulate  # noqa: E402

SETUPS = [("GPT-OSS-20B", 0.100, 1_400_000), ("Qwen3-30B-A3B", 0.125, 700_000)]
# (label, workload, TTFT SLO s, rates, rate shown in the table). x4: the same lengths four times longer (mean ~37k
# tokens), a long-context stand-in where prompts exceed 512 x N tokens often.
WORKLOADS = [("arxiv-like", workloads.arxiv(), 10.0, [1, 2, 3, 4, 6, 8], 2),
             ("arxiv-like x4", workloads.arxiv(prompt_scale=4.0), 30.0, [0.25, 0.5, 0.75, 1, 1.5], 0.5)]


def modes(layers: int):
    cap = 512 * layers  # the token count past which the paper rule's single-layer groups overrun the budget
    return [("chunked-512", "chunked-512", None), ("layered-paper", "layered-paper", None),
            (f"layered-paper+hybrid-{cap}", "layered-paper", cap), (f"layered-paper+hybrid-{cap // 4}",
                                                                    "layered-paper", cap // 4)]


def run(requests: int) -> dict:
    out = {"requests": requests, "hardware": f"{H100.name} ({H100.source}), TP2", "routing": "Zipf alpha=1.3",
           "cases": []}
    for model, tbt_slo, kv in SETUPS:
        cost = CostModel(MODELS[model], H100, tp=2, alpha=1.3, overhead_s=0.002)
        for wname, workload, ttft_slo, rates, shown in WORKLOADS:
            sc = Scenario(workload, ttft_slo, tbt_slo, requests=requests)
            for label, mode, chunk in modes(cost.m.layers):
                runs = [simulate(cost, mode, sc, r, kv_capacity_tokens=kv, layered_chunk=chunk) for r in rates]
                ok = [r["rate"] for r in runs if r["slo_met"]]
                for r in runs:
                    r.pop("cohort_kinds", None)
                out["cases"].append({"model": model, "workload": wname, "mode": label, "tbt_slo_s": tbt_slo,
                                     "ttft_slo_s": ttft_slo, "shown_rate": shown,
                                     "max_slo_rate": max(ok) if ok else 0.0, "runs": runs})
    return out


def table(report: dict) -> str:
    lines = [f"Simulated, {report['hardware']}, routing {report['routing']}, synthetic lengths, "
             f"{report['requests']} requests per run; latencies at the shown rate.", "",
             "| model | workload | mode | max SLO rate (req/s) | shown rate | TTFT mean (s) | E2E mean (s) | gap p99 (ms) "
             "| gap max (ms) | expert traffic (TB) |", "|" + "---|" * 10]
    for c in report["cases"]:
        r = next(x for x in c["runs"] if x["rate"] == c["shown_rate"])
        lines.append(f"| {c['model']} | {c['workload']} | {c['mode']} | {c['max_slo_rate']:g} | {c['shown_rate']:g} "
                     f"| {r['ttft_mean_s']:.2f} | "
                     f"{r['e2e_mean_s']:.2f} | {r['tbt_p99_s'] * 1e3:.0f} | {r['tbt_max_s'] * 1e3:.0f} | "
                     f"{r['expert_bytes'] / 1e12:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    run_and_save(args.out, "hybrid", lambda: run(args.requests), table)


if __name__ == "__main__":
    main()
