"""The CPU engine's policy comparison replayed in the simulator with many seeds (issue 4, items b and a).

    .venv/bin/python benchmarks/sim_cpu_policies.py [--seeds 20] [--out benchmarks/results/sim]

Same model (bench-qwen3-moe), workloads (ShareGPT-like and arXiv-like lengths scaled 1/8, outputs 1/16, synthetic),
32 requests per run and policy settings as `ablation.py --policies` (our policy without a TBT target: the paper's
per-iteration budget, CPU-calibrated roofline model for the execution choice), on the CPU-calibrated profile. Each
seed draws new lengths and arrivals, the same for every mode; a run takes milliseconds, so the paired comparison
that needs half an hour per five repetitions on the real engine gets many seeds here. Rates: the engine's and two
heavier ones (the simulated CPU runs faster than the real one, see benchmarks/README.md).
Modes: layered-paper; layered-ours (defaults); layered-ours-eager-join (a new cohort joins the pipeline whenever
the budget allows, the first version). Prints and writes cpu_policies.json / .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sgl_layered.analysis import workloads  # noqa: E402
from sim_report import DEFAULT_OUT, run_and_save  # noqa: E402
from sgl_layered.core.adaptive import AdaptivePolicy, Switches  # noqa: E402
from sgl_layered.core.paper import PaperPolicy  # noqa: E402
from sgl_layered.core.roofline import CostModel  # noqa: E402
from sgl_layered.sim.engine import Simulator  # noqa: E402
from sgl_layered.core.hardware import CPU_CALIBRATED, ITERATION_OVERHEAD_S  # noqa: E402
from sgl_layered.core.shapes import MODELS  # noqa: E402
from sgl_layered.sim.sweep import Scenario, make_requests  # noqa: E402

COST = CostModel(MODELS["bench-qwen3-moe"], CPU_CALIBRATED, overhead_s=ITERATION_OVERHEAD_S[CPU_CALIBRATED.name])
WORKLOADS = [("sharegpt-like", workloads.sharegpt(1 / 8, 1 / 16), [1.2, 2.4, 3.6]),
             ("arxiv-like", workloads.arxiv(1 / 8, 1 / 16), [0.6, 1.2, 1.8])]


def policy(mode: str):
    if mode == "layered-paper":
        return PaperPolicy()
    switches = Switches(eager_join=mode.endswith("eager-join"))
    return AdaptivePolicy(switches=switches, predict_seconds=COST.seconds, layer_costs=COST.layer_costs(512))


MODES = ["layered-paper", "layered-ours", "layered-ours-eager-join"]


def one_run(mode: str, workload, rate: float, seed: int) -> tuple:
    """(TTFT p50, token-gap p99) of one 32-request run."""
    reqs = make_requests(Scenario(workload, 6.0, 1.0, requests=32, seed=seed), rate)
    result = Simulator(COST, "layered", policy=policy(mode), kv_capacity_tokens=65536).run(reqs)
    ttfts = sorted(r.first_token - r.arrival for r in result.requests)
    gaps = sorted(b - a for r in result.requests for a, b in zip(r.token_times, r.token_times[1:]))
    return statistics.median(ttfts), gaps[int(0.99 * (len(gaps) - 1))] if gaps else 0.0


def run(seeds: int) -> dict:
    cases = []
    for wname, workload, rates in WORKLOADS:
        for rate in rates:
            runs = {m: [one_run(m, workload, rate, 1000 * s) for s in range(seeds)] for m in MODES}
            base = runs[MODES[0]]
            for m in MODES:
                ttft_ratio = [a[0] / b[0] for a, b in zip(runs[m], base)]
                gap_ratio = [a[1] / b[1] for a, b in zip(runs[m], base)]
                cases.append({"workload": wname, "rate": rate, "mode": m,
                              "ttft_p50_median_s": statistics.median(x[0] for x in runs[m]),
                              "gap_p99_median_s": statistics.median(x[1] for x in runs[m]),
                              "ttft_ratio_median": statistics.median(ttft_ratio),
                              "gap_ratio_median": statistics.median(gap_ratio),
                              "ttft_not_worse_runs": sum(r <= 1.0 for r in ttft_ratio), "runs": seeds})
    return {"hardware": f"{CPU_CALIBRATED.name} ({CPU_CALIBRATED.source})", "model": "bench-qwen3-moe",
            "requests_per_run": 32, "seeds": seeds, "cases": cases}


def table(report: dict) -> str:
    lines = [f"Simulated, {report['hardware']}, {report['model']}, synthetic lengths, {report['requests_per_run']} "
             f"requests per run, {report['seeds']} seeds; ratios are paired (same seed) against layered-paper.", "",
             "| workload | rate (req/s) | mode | TTFT p50 median (s) | gap p99 median (ms) | TTFT ratio median "
             "| gap p99 ratio median | runs with TTFT not worse |", "|" + "---|" * 8]
    for c in report["cases"]:
        lines.append(f"| {c['workload']} | {c['rate']:g} | {c['mode']} | {c['ttft_p50_median_s']:.2f} | "
                     f"{c['gap_p99_median_s'] * 1e3:.0f} | {c['ttft_ratio_median']:.2f} | {c['gap_ratio_median']:.2f} | "
                     f"{c['ttft_not_worse_runs']}/{c['runs']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    run_and_save(args.out, "cpu_policies", lambda: run(args.seeds), table)


if __name__ == "__main__":
    main()
