"""Every table and plot of benchmarks/README.md, regenerated from the saved data under benchmarks/results/.

    .venv/bin/python benchmarks/readme_tables.py            # rewrite the README's generated blocks and the plots
    .venv/bin/python benchmarks/readme_tables.py --check    # exit 1 where a block differs from what the data give

A generated block is the README text between `<!-- generated: NAME -->` and `<!-- /generated -->`; NAME is a key
of BLOCKS. Each block ends with the saved files it was computed from and the commit those came from. Prose
outside the blocks is written by hand; a number it quotes must be one a block shows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
from pathlib import Path
from statistics import median
from typing import Callable, Dict, Iterable, List

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(HERE, "README.md")
README_PATH = Path(README)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from report_table import coverage_table, fmt, run_line, runs_table  # noqa: E402

from sgl_layered.analysis import expert_traffic  # noqa: E402
from sgl_layered.analysis.frontier import paired_ratio_ci  # noqa: E402
from sgl_layered.analysis.regime import prompt_work as iteration_prompt_work, regime  # noqa: E402
from sgl_layered.models import get_preset  # noqa: E402

BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- /generated -->)", re.S)


def _load(rel: str) -> dict:
    with open(os.path.join(RESULTS, rel)) as f:
        return json.load(f)


def _source(*rels: str, commit: str) -> str:
    return f"\n\n<sub>From {', '.join(f'`results/{r}`' for r in rels)} (commit `{commit}`).</sub>"


# --- the CPU engine's frontier runs --------------------------------------------------------------------------


def trace_rows(directory: str, run: dict) -> List[dict]:
    """The trace rows of one run. Newer results name the run's iterations (`trace_iters`); a trace holding a
    single run (one workload, one rate) is taken from the first prompt after the warm-up request onwards."""
    stem = os.path.join(directory, f"trace-{run['routing']}-{run['mode']}.jsonl")
    opener = (lambda: gzip.open(stem + ".gz", "rt")) if os.path.exists(stem + ".gz") else (lambda: open(stem))
    with opener() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if "trace_iters" in run:
        if run["trace_iters"] is None:
            return []
        first, last = run["trace_iters"]
        return [r for r in rows if first <= r["iter"] <= last]
    warmup = set(rows[0]["prefill"][0]["rids"]) if rows and rows[0]["prefill"] else set()
    for i, r in enumerate(rows):
        if any(set(p["rids"]) - warmup for p in r["prefill"]):
            return rows[i:]
    return []


def max_client_wait(directory: str, rep: dict, run: dict) -> float:
    """The longest a request of the run waited in the client before being sent: its saved record against the plan's
    seeded arrival schedule."""
    from ablation import arrival_schedule, load_records

    from sgl_layered.analysis.latency import client_waits

    records = load_records(os.path.join(directory, "records",
                                        f"{run['routing']}-{run['mode']}-{run['workload']}-{run['rate']}.json.gz"))
    return max(client_waits(records, arrival_schedule(len(records), run["rate"], rep["plan"]["seed"])))


def frontier_blocks(name: str, workload: str) -> Dict[str, Callable[[], str]]:
    rel = f"{name}/results.json"

    def runs():
        rep = _load(rel)
        return rep, [r for r in rep["runs"] if r["workload"] == workload]

    def runs_with_rows():
        """Each run of the workload with its trace rows (the per-call expert bitmaps the bounds come from)."""
        rep, rs = runs()
        directory = os.path.join(RESULTS, name)
        return rep, [(r, trace_rows(directory, r)) for r in rs]

    def table() -> str:
        rep, items = runs_with_rows()
        w = rep["workloads"][workload]
        lines = [run_line(rep) + f" Workload {workload} at {items[0][0]['rate']:g} req/s, prompts x{w['prompt_scale']:g}, "
                 f"outputs x{w['output_scale']:g} of the traced lengths.", "",
                 "| mode | TTFT p50 (s) | TTFT p99 (s) | gap p50 (ms) | gap p99 (ms) | SLO attained "
                 "| max client wait (s) | decode rows beside prompt work (mean) | prompt tokens beside >= 16 decode rows "
                 "| expert GB loaded | prompt expert GB | reload factor |", "|" + "---|" * 12]
        for r, rows in items:
            g, b, lat = regime(rows), expert_traffic.bounds(rows), r["latency"]
            lines.append(
                f"| {r['mode']} | {fmt(lat['ttft_p50_s'])} | {fmt(lat['ttft_p99_s'])} | {fmt(lat['tbt_p50_s'], 1e3, 0)} "
                f"| {fmt(lat['tbt_p99_s'], 1e3, 0)} | {fmt(lat['slo_attainment'], pct=True)} "
                f"| {fmt(max_client_wait(os.path.join(RESULTS, name), rep, r))} "
                f"| {fmt(g['decode_rows_mean'], 1, 1)} | {fmt(g['tokens_beside_16'], pct=True)} "
                f"| {fmt(b.get('loaded'), 1e-9, 1)} | {fmt(b.get('prompt'), 1e-9, 1)} "
                f"| {fmt(b.get('reload_factor'))} |")
        return "\n".join(lines) + _source(rel, f"{name}/trace-*.jsonl.gz", commit=rep["commit"])

    def bounds() -> str:
        rep, items = runs_with_rows()
        lines = ["| mode | loaded | prompt (measured) | per cohort, no decode credit | one pass per request "
                 "| prompt floor | floor (all rows) |", "|" + "---|" * 7]
        for r, rows in items:
            b = expert_traffic.bounds(rows)
            if b:
                lines.append(f"| {r['mode']} | " + " | ".join(
                    fmt(b[k], 1e-9, 1) for k in ("loaded", "prompt", "per_cohort", "one_pass_each", "prompt_floor",
                                                 "floor")) + " |")
        return "Expert GB per run:\n\n" + "\n".join(lines) + _source(rel, commit=rep["commit"])

    def prompt_work() -> str:
        """Prompt work per iteration in full-depth tokens (tokens x layers run / model layers): what bounds an
        iteration's length, whatever the timing noise."""
        rep, items = runs_with_rows()
        lines = ["| mode | iterations with prompt work | full-depth prompt tokens per iteration: p50 | p99 | max "
                 "| largest prompt unit (tokens) |", "|" + "---|" * 6]
        for r, rows in items:
            work = iteration_prompt_work(rows)
            if work:
                unit = max(p["tokens"] for x in rows for p in x["prefill"])
                lines.append(f"| {r['mode']} | {len(work)} | {work[len(work) // 2]:.0f} "
                             f"| {work[min(len(work) - 1, int(0.99 * len(work)))]:.0f} | {work[-1]:.0f} | {unit} |")
        return "\n".join(lines) + _source(rel, f"{name}/trace-*.jsonl.gz", commit=rep["commit"])

    def matched() -> str:
        rep, _ = runs()
        lines = ["| mode | its gap p99 (ms) | its TTFT p50 (s) | TTFT / mixed-chunk frontier TTFT at that gap p99 "
                 "| 95% CI (request bootstrap) | draws inside mixed-chunk's range |", "|" + "---|" * 6]
        lat = {r["mode"]: r["latency"] for r in rep["runs"] if r["workload"] == workload}
        for m in rep["matched_tail"]:
            if m["workload"] != workload:
                continue
            lo, hi = m["ci95"]
            ci = f"{lo:.2f}-{hi:.2f}" if lo is not None else "– (too few matched draws)"
            lines.append(f"| {m['mode']} | {fmt(lat[m['mode']]['tbt_p99_s'], 1e3, 0)} "
                         f"| {fmt(lat[m['mode']]['ttft_p50_s'])} | "
                         f"{fmt(m['ratio']) if m['ratio'] is not None else 'outside the range'} | {ci} "
                         f"| {m['matched_draws']:.0%} |")
        return "\n".join(lines) + _source(rel, f"{name}/records/", commit=rep["commit"])

    def coverage() -> str:
        rep, _ = runs()
        p = get_preset(rep["model"])
        return coverage_table(rep, f"{p.num_experts} experts, top-{p.top_k}") + _source(rel, commit=rep["commit"])

    return {f"{name}": table, f"{name}-bounds": bounds, f"{name}-matched": matched, f"{name}-coverage": coverage,
            f"{name}-prompt-work": prompt_work}


# --- earlier CPU runs ------------------------------------------------------------------------------------------


def ablation_table(name: str, modes=None) -> Callable[[], str]:
    def block() -> str:
        rep = _load(f"{name}/results.json")
        return run_line(rep) + "\n\n" + runs_table(rep, modes) + _source(f"{name}/results.json", commit=rep["commit"])
    return block


def ablation_coverage(name: str) -> Callable[[], str]:
    def block() -> str:
        rep = _load(f"{name}/results.json")
        p = get_preset(rep["model"])
        return coverage_table(rep, f"{p.num_experts} experts, top-{p.top_k}") + _source(
            f"{name}/results.json", commit=rep["commit"])
    return block


def _paired_cell(mine: List[float], base: List[float]) -> str:
    """Paired repetitions (same seeds): the median of per-pair ratios, the bootstrap 95% CI of the ratio of
    medians, and in how many pairs `mine` was lower."""
    c = paired_ratio_ci(list(zip(mine, base)))
    return (f"{median(a / b for a, b in zip(mine, base)):.2f} [{c['ci95'][0]:.2f}-{c['ci95'][1]:.2f}], "
            f"{c['wins']} of {c['pairs']}")


def policies_repeated() -> str:
    """The paper rule vs our policy: paired repetitions pooled over the saved repeat runs."""
    names = ["policies-final", "policies-final-2"]
    reps = [_load(f"{n}/repeats.json") for n in names]
    lines = ["| workload | TTFT p50, median (s): paper / ours | paired TTFT ratio ours / paper: median of ratios "
             "[95% CI of the ratio of medians], ours lower | gap p99, median (ms): paper / ours "
             "| paired gap p99 ratio: median [95% CI], ours lower | repetitions |", "|" + "---|" * 6]
    by = {}
    for rep in reps:
        for s in rep["summary"]:
            by.setdefault((s["workload"], s["rate"], s["mode"]), []).append(s)
    for (workload, rate, mode), items in by.items():
        if mode != "layered-ours":
            continue
        paper = by[(workload, rate, "layered-auto")]
        t_o = [v for s in items for v in s["ttft_p50_s"]]
        t_p = [v for s in paper for v in s["ttft_p50_s"]]
        g_o = [v for s in items for v in s["tbt_p99_s"]]
        g_p = [v for s in paper for v in s["tbt_p99_s"]]
        lines.append(
            f"| {workload} @{rate:g} | {median(t_p):.2f} / {median(t_o):.2f} | {_paired_cell(t_o, t_p)} "
            f"| {median(g_p) * 1e3:.0f} / {median(g_o) * 1e3:.0f} | {_paired_cell(g_o, g_p)} | {len(t_o)} |")
    return "\n".join(lines) + _source(*(f"{n}/repeats.json" for n in names),
                                      commit=" and ".join(f"{r['commit']}" for r in reps))


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def headline(name: str, mode: str, base: str) -> Callable[[], str]:
    """`mode` against `base`, repeated with new seeds per repetition and alternating order (ablation.py --repeat):
    per-repetition TTFT p50, token-gap p99 and prompt expert bytes, paired ratios with bootstrap CIs."""
    def block() -> str:
        rel = f"{name}/repeats.json"
        rep = _load(rel)
        per_rep = [_load(f"{name}/rep{i}/results.json") for i in range(rep["repetitions"])]
        lines = ["| workload | metric | " + f"{base}: median | {mode}: median | paired ratio {mode} / {base}: "
                 "median of ratios [95% CI of the ratio of medians], lower in |", "|" + "---|" * 5]
        for w, rates in rep["plan"]["rates"].items():
            for rate in rates:
                def values(m: str, get) -> List[float]:
                    return [get(r) for p in per_rep for r in p["runs"]
                            if r["mode"] == m and r["workload"] == w and r["rate"] == rate]
                for label, get, scale in [
                        ("TTFT p50 (s)", lambda r: r["latency"]["ttft_p50_s"], 1),
                        ("TTFT p99 (s)", lambda r: r["latency"]["ttft_p99_s"], 1),
                        ("token-gap p99 (ms)", lambda r: r["latency"]["tbt_p99_s"], 1e3),
                        ("prompt expert GB", lambda r: r["expert_bounds"]["prompt"], 1e-9),
                        ("expert GB loaded", lambda r: r["expert_bounds"]["loaded"], 1e-9),
                        ("decode rows beside prompt work (mean)", lambda r: r["regime"]["decode_rows_mean"], 1)]:
                    mine, theirs = values(mode, get), values(base, get)
                    lines.append(f"| {w} @{rate:g} | {label} | {_num(median(theirs) * scale)} | "
                                 f"{_num(median(mine) * scale)} | {_paired_cell(mine, theirs)} |")
        first = per_rep[0]
        return (f"{rep['repetitions']} repetitions x {rep['plan']['requests']} requests per run, seeds "
                f"{rep['plan']['seed']} + 100 i, mode order alternating; model `{first['model']}`; "
                f"{sum(p['wall_time_s'] for p in per_rep) / 60:.0f} min wall time.\n\n" + "\n".join(lines)
                + _source(rel, f"{name}/rep*/results.json", f"{name}/rep*/records/", commit=rep["commit"]))
    return block


def rate_sweep(*names: str) -> Callable[[], str]:
    """Every mode at every rate of the runs `names` (ablation.py --rates): latency, the longest token gap, SLO
    attainment, and each mode's highest rate attaining the SLO goal (goodput in DistServe's sense). Not the runs'
    requests-passed-per-second: a finite run's duration is set by its longest outputs, not by the rate."""
    def block() -> str:
        reps = [_load(f"{n}/results.json") for n in names]
        runs = [r for rep in reps for r in rep["runs"]]
        modes = list(dict.fromkeys(r["mode"] for r in runs))
        lines = ["| workload | rate (req/s) | mode | TTFT p50 (s) | TTFT p99 (s) | gap p99 (ms) | longest gap (ms) "
                 "| decode rows beside prompt work (mean) | SLO attained | output tok/s |", "|" + "---|" * 10]
        for r in sorted(runs, key=lambda r: (r["workload"], r["rate"], modes.index(r["mode"]))):
            lat = r["latency"]
            lines.append(f"| {r['workload']} | {r['rate']:g} | {r['mode']} | {fmt(lat['ttft_p50_s'])} "
                         f"| {fmt(lat['ttft_p99_s'])} | {fmt(lat['tbt_p99_s'], 1e3, 0)} | {fmt(lat['tbt_max_s'], 1e3, 0)} "
                         f"| {fmt(r['regime']['decode_rows_mean'], 1, 1)} | {fmt(lat['slo_attainment'], pct=True)} "
                         f"| {fmt(lat['throughput_tok_s'], 1, 0)} |")
        lines += ["", "| workload | mode | highest rate attaining the SLO goal | rates missing it |", "|---|---|---|---|"]
        for w in dict.fromkeys(r["workload"] for r in runs):
            for m in modes:
                mine = sorted((r["rate"], r["latency"]["slo_met"]) for r in runs if r["mode"] == m and r["workload"] == w)
                met = [rate for rate, ok in mine if ok]
                missed = [f"{rate:g}" for rate, ok in mine if not ok]
                lines.append(f"| {w} | {m} | {f'{max(met):g}' if met else 'none'} | {', '.join(missed) or 'none'} |")
        goal = runs[0]["latency"]["slo_goal"]
        head = "\n".join(run_line(rep) for rep in reps)
        return (f"{head}\n\nSLO goal: {goal:.0%} of requests meet both SLOs.\n\n" + "\n".join(lines)
                + _source(*(f"{n}/results.json" for n in names), *(f"{n}/records/" for n in names),
                          commit=" and ".join(rep["commit"] for rep in reps)))
    return block


def calibration() -> str:
    c = _load("default/cpu_calibration.json")
    p = c["profile"]
    lines = [f"Fitted profile: effective {p['mem_bw_GBps']:.1f} GB/s for weights, {p['GFLOPs'] / 1e3:.2f} TFLOP/s, "
             f"{p['iteration_overhead_s'] * 1e3:.1f} ms per iteration overhead.", "",
             "| iterations | n | median abs. relative error | p90 |", "|---|---|---|---|",
             f"| fitting set | {c['fit_error']['n']} | {c['fit_error']['median_abs_rel_error']:.0%} "
             f"| {c['fit_error']['p90_abs_rel_error']:.0%} |"]
    lines += [f"| held out: {mode} | {e['n']} | {e['median_abs_rel_error']:.0%} | {e['p90_abs_rel_error']:.0%} |"
              for mode, e in c["heldout_error"].items()]
    return "\n".join(lines) + _source("default/cpu_calibration.json", commit=c.get("commit", "not recorded"))


def scheduler_overhead() -> str:
    s = _load("scheduler_overhead.json")
    lines = ["| engine | queued requests | iterations sampled | scheduling per iteration, median (µs) "
             "| of which the policy (µs) |", "|" + "---|" * 5]
    for mode, depths in s["engine"].items():
        for depth, v in depths.items():
            lines.append(f"| {mode} | {depth} | {v['iterations']} | {fmt(v['scheduling_us_median'], 1, 0)} "
                         f"| {fmt(v['policy_us_median'], 1, 0)} |")
    micro = {k: v for k, v in s["micro"].items() if k != "shape"}
    lines += ["", f"Micro-benchmark ({', '.join(f'{k} {v}' for k, v in s['micro']['shape'].items())}):", "",
              "| part | µs |", "|---|---|"] + [f"| {k.replace('_us', '')} | {v:.1f} |" for k, v in micro.items()]
    return (f"{s['note']}.\n\n" + "\n".join(lines)
            + _source("scheduler_overhead.json", commit=s.get("commit", "not recorded")))


def soak() -> str:
    s = _load("soak.json")
    return ("| measured | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in _flat(s).items()
                                                            if not isinstance(v, list))
            + _source("soak.json", commit=s.get("commit", "not recorded")))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if k in ("commit", "samples", "series", "per_depth_raw"):
            continue
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, float):
            out[prefix + k] = f"{v:.4g}"
        elif not isinstance(v, list) or len(v) <= 8:
            out[prefix + k] = v
    return out


def trained_coverage() -> str:
    """The trained checkpoint's routing beside the calibrated routing and the same architecture's random router."""
    c = _load("trained/coverage.json")
    sizes = list(c["U"]["trained"]["consecutive"])
    label = {"trained": "trained router", "calibrated": f"calibrated (Zipf alpha {c['calibrated_alpha']:g})",
             "random_weights": "random-weight router"}
    lines = [f"`{c['model']}` ({c['layers']} layers, {c['experts']} experts, top-{c['top_k']}; held-out loss "
             f"{c['heldout_loss']:.2f} nats/token), corpus {c['corpus']['documents']} fortunes of Debian's "
             f"`fortunes` package ({c['corpus']['install']}). U(n): distinct experts that n consecutive tokens of "
             f"held-out text touch, mean over layers and {c['windows']} windows:", "",
             "| routing | " + " | ".join(f"n={n}" for n in sizes) + " |", "|" + "---|" * (len(sizes) + 1)]
    for key, name in label.items():
        u = c["U"][key]["consecutive"]
        lines.append(f"| {name} | " + " | ".join(f"{u[n]:.1f}" for n in sizes) + " |")
    return "\n".join(lines) + _source("trained/coverage.json", commit=c["commit"])


# --- the simulator ---------------------------------------------------------------------------------------------


def sim_block(stem: str, module: str) -> Callable[[], str]:
    def block() -> str:
        rep = _load(f"sim/{stem}.json")
        table = __import__(module).table
        return table(rep) + _source(f"sim/{stem}.json", commit=rep.get("commit", "not recorded"))
    return block


BLOCKS: Dict[str, Callable[[], str]] = {
    **frontier_blocks("frontier-sharegpt", "sharegpt-like"),
    **frontier_blocks("frontier-arxiv", "arxiv-like"),
    "headline-sharegpt": headline("headline-sharegpt", "layered-ours-512", "mixed-chunk-256"),
    **frontier_blocks("frontier-trained", "sharegpt-like"),
    "headline-trained": headline("headline-trained", "layered-ours-512", "mixed-chunk-512"),
    "rates-trained": rate_sweep("rates-trained", "rates-trained-high"),
    "default": ablation_table("default"),
    "default-coverage": ablation_coverage("default"),
    "dense": ablation_table("dense"),
    "dense-load": ablation_table("dense-load"),
    "policies-repeated": policies_repeated,
    "trained-coverage": trained_coverage,
    "cpu-calibration": calibration,
    "scheduler-overhead": scheduler_overhead,
    "soak": soak,
    "sim-paper-scale": sim_block("paper_scale_alpha1.3", "sim_paper_scale"),
    "sim-hybrid": sim_block("hybrid", "sim_hybrid"),
    "sim-cpu-policies": sim_block("cpu_policies", "sim_cpu_policies"),
}

# Plots, redrawn from the same files: each entry names the results directories one set of plots combines (drawn
# into the first; a rate sweep run in parts is one sweep).
PLOTS = [("frontier-sharegpt",), ("frontier-arxiv",), ("frontier-trained",), ("rates-trained", "rates-trained-high"),
         ("default",), ("dense",), ("dense-load",)]


def combined(names) -> dict:
    """One report of the runs of several results directories: their runs together, the union of their rates, and
    every commit they came from."""
    reps = [_load(f"{n}/results.json") for n in names]
    if len(reps) == 1:
        return reps[0]
    rates = {w: sorted({r for rep in reps for r in rep["plan"]["rates"].get(w, [])}) for w in reps[0]["plan"]["rates"]}
    return {**reps[0], "plan": {**reps[0]["plan"], "rates": rates}, "runs": [r for rep in reps for r in rep["runs"]],
            "commit": " and ".join(rep["commit"] for rep in reps)}


def render(text: str) -> str:
    names = [m.group(2) for m in BLOCK.finditer(text)]
    unknown = set(names) - set(BLOCKS)
    if unknown:
        raise SystemExit(f"README names blocks that readme_tables.py does not make: {sorted(unknown)}")
    return BLOCK.sub(lambda m: m.group(1) + BLOCKS[m.group(2)]() + "\n" + m.group(4), text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = ap.parse_args()
    text = open(README).read()
    new = render(text)
    if args.check:
        if new != text:
            old_blocks = dict((m.group(2), m.group(3)) for m in BLOCK.finditer(text))
            for m in BLOCK.finditer(new):
                if old_blocks.get(m.group(2)) != m.group(3):
                    print(f"block {m.group(2)} differs from what the saved data give")
            return 1
        print(f"{len(BLOCK.findall(text))} generated blocks match the saved data")
        return 0
    with open(README, "w") as f:
        f.write(new)
    from plots import make_plots

    for names in PLOTS:
        make_plots(combined(names), os.path.join(RESULTS, names[0]))
    print(f"rewrote {len(BLOCK.findall(new))} blocks and the plots of {', '.join('+'.join(n) for n in PLOTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
