"""Markdown tables of an ablation results.json (no hand-copied numbers); benchmarks/readme_tables.py puts them in
the README.

    .venv/bin/python benchmarks/report_table.py benchmarks/results/default/results.json
"""

import json
import sys


def fmt(v, scale=1.0, digits=2, pct=False):
    if v is None:
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v * scale:.{digits}f}"


def run_line(rep: dict) -> str:
    return (f"Run: commit `{rep['commit']}`, model `{rep['model']}`, {rep['wall_time_s'] / 60:.1f} min wall time, "
            f"{rep['plan']['requests']} requests per run, SLO TTFT/gap: "
            + ", ".join(f"{w} {s[0]:g} s / {s[1] * 1e3:g} ms" for w, s in rep["plan"]["slo"].items()) + ".")


def runs_table(rep: dict, modes=None) -> str:
    """One row per run: latency, SLO attainment and the expert bytes the run loaded."""
    lines = ["| routing | mode | workload | rate (req/s) | TTFT p50 (s) | TTFT p99 (s) | gap p50 (ms) | gap p99 (ms) "
             "| gap max (ms) | E2E mean (s) | tok/s | SLO attained | expert GB loaded |", "|" + "---|" * 13]
    for r in rep["runs"]:
        if modes is not None and r["mode"] not in modes:
            continue
        lat, ex = r["latency"], r["experts"]
        lines.append(
            f"| {r['routing']} | {r['mode']} | {r['workload']} | {r['rate']:g} | {fmt(lat['ttft_p50_s'])} | "
            f"{fmt(lat['ttft_p99_s'])} | {fmt(lat['tbt_p50_s'], 1e3, 0)} | {fmt(lat['tbt_p99_s'], 1e3, 0)} | "
            f"{fmt(lat['tbt_max_s'], 1e3, 0)} | {fmt(lat['e2e_mean_s'])} | {fmt(lat['throughput_tok_s'], 1, 1)} | "
            f"{fmt(lat['slo_attainment'], pct=True)} | {fmt(ex['loaded_bytes'] or None, 1e-9, 1)} |")
    return "\n".join(lines)


def coverage_table(rep: dict, experts: str) -> str:
    """U(n): the mean over layers of the distinct experts n rows touch, as observed in the run's traces."""
    sizes = list(next(iter(rep["coverage_U"].values())))
    lines = [f"Measured coverage U(n) (mean over layers of the distinct experts n rows touch; {experts}):", "",
             "| routing / workload | " + " | ".join(f"n={n}" for n in sizes) + " |", "|" + "---|" * (len(sizes) + 1)]
    for key, table in rep["coverage_U"].items():
        lines.append(f"| {key} | " + " | ".join(f"{table[n]:.1f}" for n in sizes) + " |")
    return "\n".join(lines)


def main(path):
    rep = json.load(open(path))
    print(run_line(rep) + "\n")
    print(runs_table(rep))
    if rep.get("coverage_U"):
        print()
        print(coverage_table(rep, "see the model's preset for its expert count"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/default/results.json")
