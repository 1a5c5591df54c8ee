"""Print the markdown tables of benchmarks/README.md from an ablation results.json (no hand-copied numbers).

    .venv/bin/python benchmarks/report_table.py benchmarks/results/default/results.json
"""

import json
import sys


def fmt(v, scale=1.0, digits=2, pct=False):
    if v is None:
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v * scale:.{digits}f}"


def main(path):
    rep = json.load(open(path))
    print(f"Run: commit `{rep['commit']}`, model `{rep['model']}`, {rep['wall_time_s'] / 60:.1f} min wall time, "
          f"{rep['plan']['requests']} requests per run, SLO TTFT/gap: "
          + ", ".join(f"{w} {s[0]:g} s / {s[1] * 1e3:g} ms" for w, s in rep["plan"]["slo"].items()) + ".\n")
    print("| routing | mode | workload | rate (req/s) | TTFT p50 (s) | TTFT p99 (s) | gap p50 (ms) | gap p99 (ms) "
          "| gap max (ms) | E2E mean (s) | tok/s | SLO attained | expert MB / prefill token | expert GB loaded |")
    print("|" + "---|" * 14)
    for r in rep["runs"]:
        lat, ex = r["latency"], r["experts"]
        print(f"| {r['routing']} | {r['mode']} | {r['workload']} | {r['rate']:g} | {fmt(lat['ttft_p50_s'])} | "
              f"{fmt(lat['ttft_p99_s'])} | {fmt(lat['tbt_p50_s'], 1e3, 0)} | {fmt(lat['tbt_p99_s'], 1e3, 0)} | "
              f"{fmt(lat['tbt_max_s'], 1e3, 0)} | {fmt(lat['e2e_mean_s'])} | {fmt(lat['throughput_tok_s'], 1, 1)} | "
              f"{fmt(lat['slo_attainment'], pct=True)} | {fmt(ex['prefill_bytes_per_token'], 1e-6, 3)} | "
              f"{fmt(ex['loaded_bytes'], 1e-9, 1)} |")
    print("\nMeasured coverage U(n) (mean over layers of the distinct experts n rows touch; 64 experts, top-8):\n")
    sizes = list(next(iter(rep["coverage_U"].values())))
    print("| routing / workload | " + " | ".join(f"n={n}" for n in sizes) + " |")
    print("|" + "---|" * (len(sizes) + 1))
    for key, table in rep["coverage_U"].items():
        print(f"| {key} | " + " | ".join(f"{table[n]:.1f}" for n in sizes) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/default/results.json")
