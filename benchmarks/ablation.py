"""Layered prefill vs SGLang's chunked prefill, side by side in one run: latency, SLO and expert traffic.

    .venv/bin/python benchmarks/ablation.py            # default sweep (CPU, bench-size model, ~20 min)
    .venv/bin/python benchmarks/ablation.py --quick    # CI smoke run (tiny model, a minute or two)
    .venv/bin/python benchmarks/ablation.py --dense    # the same comparison on a dense model (bench-qwen3)
    .venv/bin/python benchmarks/ablation.py --policies --modes layered-auto,layered-ours --repeat 3
                                                       # paired repetitions, new seeds each, medians reported

For each routing (the model's own, and the calibrated one) and mode (SGLang default, chunked + mixed at 512
and 2048, layered auto, layered with fixed G), one SGLang server serves every workload (ShareGPT-like and
arXiv-like lengths, scaled down for CPU) at each request rate, with the same seeded prompts and Poisson
arrivals for every mode. Each run records SGLang's own client timings and the server's per-iteration trace
with expert accounting. Writes results.json, results.csv and PNG plots into the output directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from sgl_layered import cpu  # noqa: E402
from sgl_layered.analysis import expert_traffic, latency, workloads  # noqa: E402
from sgl_layered.analysis.regime import regime  # noqa: E402

MODES: Dict[str, List[str]] = {
    "sglang-default": [],
    "chunked-512": ["--enable-mixed-chunk", "--chunked-prefill-size", "512"],
    "chunked-2048": ["--enable-mixed-chunk", "--chunked-prefill-size", "2048"],
    "layered-auto": ["--enable-layered-prefill"],
    "layered-G2": ["--enable-layered-prefill", "--layered-prefill-groups", "2"],
    "layered-G4": ["--enable-layered-prefill", "--layered-prefill-groups", "4"],
    "layered-G8": ["--enable-layered-prefill", "--layered-prefill-groups", "8"],
    # Our policy (sgl_layered/core/adaptive.py): paper-equivalent per-iteration budget, pipelined cohorts,
    # whole pass when nothing decodes, activation-stash budget.
    "layered-ours": ["--enable-layered-prefill", "--layered-prefill-policy", "adaptive"],
    # Our policy with a new cohort joining the pipeline whenever the budget allows (the first version's behaviour).
    "layered-ours-eager": ["--enable-layered-prefill", "--layered-prefill-policy", "adaptive",
                           "--layered-prefill-switches", "adaptive,pipeline,stash,choose,eager_join"],
    "layered-ours+idle": ["--enable-layered-prefill", "--layered-prefill-policy", "adaptive",
                          "--layered-prefill-switches", "adaptive,pipeline,stash,choose,idle_whole"],
    # Our policy deciding as it would on an H100 (the roofline model with that profile), executed on this CPU:
    # on a dense model it runs most cohorts as 512-token chunks through every layer.
    "layered-ours-h100": ["--enable-layered-prefill", "--layered-prefill-policy", "adaptive",
                          "--layered-prefill-cost-profile", "H100-SXM"],
    # The chunk x layer hybrid (issue 4 d): prompts admitted 1024 tokens at a time, each chunk layered.
    "layered-auto+hybrid-1024": ["--enable-layered-prefill", "--layered-prefill-chunk-tokens", "1024"],
    # Stock SGLang without its overlap loop (on this CPU the loop delays every output by one forward, which a GPU
    # would hide): the fair stock baseline next to the one users run.
    "sglang-no-overlap": ["--disable-overlap-schedule"],
}
# The frontier families: each sweeps its knob over the same per-iteration prefill work (tokens per chunk or per
# layer group), so a family's settings trade TTFT against the token-gap tail.
FRONTIER_SIZES = [64, 128, 256, 512, 1024, 2048]
FAMILIES = {"mixed-chunk": "mixed-chunk-{}", "layered-paper": "layered-paper-{}", "layered-ours": "layered-ours-{}"}
for _n in FRONTIER_SIZES:
    MODES[f"mixed-chunk-{_n}"] = ["--enable-mixed-chunk", "--chunked-prefill-size", str(_n)]
    MODES[f"layered-paper-{_n}"] = ["--enable-layered-prefill", "--layered-prefill-group-tokens", str(_n)]
    MODES[f"layered-ours-{_n}"] = ["--enable-layered-prefill", "--layered-prefill-policy", "adaptive",
                                   "--layered-prefill-group-tokens", str(_n)]


@dataclass
class Plan:
    model: str
    routings: Dict[str, List[str]]  # routing -> modes
    rates: Dict[str, List[float]]  # workload -> request rates (req/s)
    requests: int  # per run
    prompt_scale: float
    output_scale: float
    slo: Dict[str, List[float]]  # workload -> [TTFT s, token gap s]
    max_total_tokens: int = 65536
    max_concurrency: int = 32
    seed: int = 0
    quick: bool = False
    sweep_rates_for: List[str] = field(default_factory=list)  # (routing "model") modes run at every rate
    expert_accounting: bool = True  # off for dense models (no experts to count)
    # CPU engine: torch_native's extend attention for the new rows only, in every mode (--layered-prefill-cpu-fast-
    # extend): otherwise a mixed batch's decode rows and a chunk's prefix rows are recomputed at full length, which
    # slows chunked prefill on this CPU far beyond what it costs on a GPU backend (sgl_layered/adapter/cpu_ops.py).
    cpu_fast_extend: bool = True
    # Per-workload output scale where it differs from output_scale (arXiv-like's outputs are short: decode batches
    # only form when they are stretched; see frontier_plan).
    output_scale_for: Dict[str, float] = field(default_factory=dict)
    # "random-ids": uniform token ids (random-weight models); "heldout-text": windows of the held-out fortunes
    # tokenized by the model's tokenizer (the trained checkpoint: its routers then see the text they were trained on).
    prompts: str = "random-ids"

    def __post_init__(self):
        if self.prompts not in ("random-ids", "heldout-text"):
            raise ValueError(f"Plan.prompts: 'random-ids' or 'heldout-text', got {self.prompts!r}")


def default_plan() -> Plan:
    main = ["sglang-default", "chunked-512", "chunked-2048", "layered-auto"]
    return Plan(
        model="bench-qwen3-moe",
        routings={"model": main + ["layered-G2", "layered-G4", "layered-G8"],
                  "calibrated": ["chunked-512", "layered-auto"]},
        rates={"sharegpt-like": [0.6, 1.2], "arxiv-like": [0.3, 0.6]},
        requests=10, prompt_scale=1 / 8, output_scale=1 / 16,
        slo={"sharegpt-like": [6.0, 1.0], "arxiv-like": [15.0, 1.0]},
        sweep_rates_for=main)


def quick_plan() -> Plan:
    return Plan(
        model="tiny-qwen3-moe",
        routings={"model": ["chunked-512", "layered-auto"], "calibrated": ["layered-auto"]},
        rates={"sharegpt-like": [4.0], "arxiv-like": [2.0]},
        requests=6, prompt_scale=1 / 8, output_scale=1 / 16,
        slo={"sharegpt-like": [5.0, 0.5], "arxiv-like": [10.0, 0.5]},
        max_total_tokens=32768, quick=True)


POLICY_MODES = ["layered-auto", "layered-ours", "layered-ours-eager", "layered-auto+hybrid-1024"]


def policy_plan() -> Plan:
    """Issue 4's comparison on the real CPU engine: the paper's rule vs our policy, same workload, one run."""
    return Plan(
        model="bench-qwen3-moe", routings={"model": POLICY_MODES},
        rates={"sharegpt-like": [1.2], "arxiv-like": [0.6]}, requests=32, prompt_scale=1 / 8, output_scale=1 / 16,
        slo={"sharegpt-like": [6.0, 1.0], "arxiv-like": [15.0, 1.0]}, sweep_rates_for=POLICY_MODES)


def frontier_plan() -> Plan:
    """Issue 13's fair baselines in the paper's regime: a decode batch running while long prompts arrive.

    Every family at every size, plus stock SGLang with and without its overlap loop, on both workloads, at one
    rate each chosen so that decode batches of 16-48 requests form on this CPU (outputs at 1/2 of the traces'
    lengths, prompts at 1/8, the CPU's scale factors), 60 requests per run. Sized on this 2-core machine: a pilot at
    1.5 / 0.5 req/s (mixed-chunk-512, 40 requests) was overloaded 3x (TTFT p50 4.2 s / 86 s, gap p99 1.7 s / 6.4 s);
    a decode step with 16-48 rows touches most of the 64 experts (~0.15-0.25 s), so ShareGPT-like's ~220 output
    tokens at 0.5 req/s keep ~20-30 requests decoding. Exclusion rules, fixed before running: no run and no
    request is dropped; a request that errors counts as an SLO miss and is listed; a server that fails to start
    stops the benchmark. Matched-tail ratios: analysis/frontier.py, reported by benchmarks/readme_tables.py.

    arXiv-like is sized apart: its traced outputs are short (mean ~205 tokens against ~1,195-token prompts at 1/8),
    and the prefill capacity of this CPU allows about 0.2 req/s, where such outputs leave ~10 requests decoding
    (a decode step over ~1,300-token contexts takes ~0.4 s). Its outputs are therefore stretched x1.25 (mean ~250,
    at most 640) so that ~20 requests decode while the long prompts arrive; a pilot at x2 reached 25-33 but its
    1,000-token stragglers made each run ~10 min. The README states both factors."""
    modes = ["sglang-default", "sglang-no-overlap"] + [f.format(n) for f in FAMILIES.values() for n in FRONTIER_SIZES]
    return Plan(
        model="bench-qwen3-moe", routings={"calibrated": modes},
        rates={"sharegpt-like": [0.5], "arxiv-like": [0.2]}, requests=60, prompt_scale=1 / 8, output_scale=1 / 2,
        slo={"sharegpt-like": [6.0, 1.0], "arxiv-like": [15.0, 1.0]}, max_concurrency=64,
        output_scale_for={"arxiv-like": 1.25})


TRAINED_MODES = ["mixed-chunk-64", "mixed-chunk-128", "mixed-chunk-256", "mixed-chunk-512", "layered-paper-128",
                 "layered-paper-256", "layered-ours-128", "layered-ours-256", "layered-ours-512"]


def trained_plan() -> Plan:
    """Issue 13's comparison on the trained checkpoint (trained-qwen3-moe: 4 layers, 32 experts, top-4, its own
    routers), prompts cut from the held-out fortunes so the routers see text like their training data. ShareGPT-like
    lengths at the frontier's factors (prompts 1/8, outputs 1/2). The model is ~60x smaller than bench-qwen3-moe, so
    an iteration is mostly SGLang's per-iteration overhead. Sized by pilots (mixed-chunk-256 and layered-ours-512):
    at 6 req/s with the client's usual 64 requests in flight, 17-30 of 100 requests waited up to 18 s in the client
    before being sent (the server was saturated, and TTFT, measured from sending, hid it); with no client limit, 60
    requests at 4.5 req/s kept 24-26 requests decoding beside prompt work, gap p99 111-146 ms, no client wait.
    Positions past the training length (256) are out of its training distribution; the routers still are trained
    ones. Exclusion rules as frontier_plan's. Its frontier picks the matched mixed-chunk
    size; --repeat repeats the pair; --rates sweeps the pair's rate to saturation."""
    return Plan(
        model="trained-qwen3-moe", routings={"model": list(TRAINED_MODES)}, rates={"sharegpt-like": [4.5]},
        requests=100, prompt_scale=1 / 8, output_scale=1 / 2, slo={"sharegpt-like": [2.0, 0.25]},
        max_concurrency=1000, prompts="heldout-text")


def frontier_quick_plan() -> Plan:
    """The frontier pipeline on the tiny model with two sizes per family (CI)."""
    modes = ["sglang-no-overlap"] + [f.format(n) for f in FAMILIES.values() for n in (64, 512)]
    return Plan(
        model="tiny-qwen3-moe", routings={"model": modes},
        rates={"sharegpt-like": [4.0]}, requests=8, prompt_scale=1 / 8, output_scale=1 / 16,
        slo={"sharegpt-like": [5.0, 0.5]}, max_total_tokens=32768, quick=True)


def dense_plan() -> Plan:
    """Issue 5: a dense model gains nothing from layering (no expert weights re-streamed per chunk); shown, not
    assumed. Same workloads, rates and SLOs as the default sweep's first rate."""
    modes = ["sglang-default", "chunked-512", "layered-auto", "layered-ours", "layered-ours-h100"]
    return Plan(
        model="bench-qwen3", routings={"model": modes},
        rates={"sharegpt-like": [0.6], "arxiv-like": [0.3]}, requests=10, prompt_scale=1 / 8, output_scale=1 / 16,
        slo={"sharegpt-like": [6.0, 1.0], "arxiv-like": [15.0, 1.0]}, expert_accounting=False)


def server_args(plan: Plan, mode: str, routing: str, trace: str) -> List[str]:
    # fp32: on this CPU (AVX-512, no AMX) SGLang's fp32 path is ~1.7x faster than bf16; expert bytes are
    # accounted in the dtype that actually runs.
    accounting = ["--layered-prefill-expert-accounting", "--layered-prefill-routing", routing] \
        if plan.expert_accounting else []
    fast_extend = ["--layered-prefill-cpu-fast-extend"] if plan.cpu_fast_extend and not cpu.have_cuda() else []
    return [*cpu.machine_server_args(plan.max_total_tokens, "float32"), "--sleep-on-idle", *MODES[mode],
            "--layered-prefill-trace", trace, *accounting, *fast_extend]


def arrival_schedule(requests: int, rate: float, plan_seed: int) -> List[float]:
    """A run's open-loop arrival offsets (the same for every mode; readme_tables recomputes them from the plan)."""
    return workloads.poisson_arrivals(requests, rate, seed=plan_seed + 2)


def heldout_stream(model_path) -> List[int]:
    from pathlib import Path

    from sgl_layered.models.train import heldout_ids

    return heldout_ids(Path(model_path))


def read_new_rows(path: str, offset: int):
    """The complete lines written since `offset` (a line still being written is left for the next read)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    done = data[:data.rfind(b"\n") + 1]
    return [json.loads(line) for line in done.splitlines() if line.strip()], offset + len(done)


def run(plan: Plan, out_dir: str) -> dict:
    from tqdm import tqdm

    from load import EnergyMeter, make_prompts, run_load, text_prompts
    from sgl_layered.models import build, get_preset
    from sgl_layered.serve import ServerProcess

    commit = _git_commit()  # the code that runs: taken before anything else
    os.makedirs(out_dir, exist_ok=True)
    model_path = build(plan.model)
    vocab = get_preset(plan.model).vocab_size
    stream = heldout_stream(model_path) if plan.prompts == "heldout-text" else None
    out_scale = {w: plan.output_scale_for.get(w, plan.output_scale) for w in ("sharegpt-like", "arxiv-like")}
    wls = {w.name: w for w in (workloads.sharegpt(plan.prompt_scale, out_scale["sharegpt-like"]),
                                 workloads.arxiv(plan.prompt_scale, out_scale["arxiv-like"]))}
    jobs = []
    for routing, modes in plan.routings.items():
        for mode in modes:
            for wname, rates in plan.rates.items():
                sweep = plan.quick or (routing == "model" and mode in plan.sweep_rates_for)
                for rate in (rates if sweep else rates[:1]):
                    jobs.append((routing, mode, wname, rate))
    results, traces, run_records = [], {}, {}
    bar = tqdm(total=len(jobs) * plan.requests, desc="requests", unit="req")
    t_start = time.time()
    for routing, modes in plan.routings.items():
        for mode in modes:
            trace = os.path.join(out_dir, f"trace-{routing}-{mode}.jsonl")
            open(trace, "w").close()
            log = os.path.join(out_dir, f"server-{routing}-{mode}.log")
            with ServerProcess(model_path, server_args(plan, mode, routing, trace), log_path=log) as server:
                warm = make_prompts([(16, 4)], vocab, seed=999)
                run_load(server.url, warm, [(16, 4)], [0.0])
                time.sleep(0.5)  # the warm-up's last trace line may still be being written
                _, offset = read_new_rows(trace, 0)  # a line boundary: complete lines only
                for (r_, m_, wname, rate) in [j for j in jobs if j[0] == routing and j[1] == mode]:
                    lengths = wls[wname].sample(plan.requests, seed=plan.seed)
                    prompts = text_prompts(lengths, stream, seed=plan.seed + 1) if stream else \
                        make_prompts(lengths, vocab, seed=plan.seed + 1)
                    arrivals = arrival_schedule(plan.requests, rate, plan.seed)
                    server.flush_cache()
                    bar.set_postfix_str(f"{routing}/{mode}/{wname}@{rate}")
                    with EnergyMeter() as meter:  # GPU energy via NVML; on CPU it records why not
                        records, duration = run_load(server.url, prompts, lengths, arrivals, plan.max_concurrency,
                                                     bar)
                    save_records(records, os.path.join(out_dir, "records", f"{routing}-{mode}-{wname}-{rate}.json.gz"))
                    time.sleep(0.5)  # let the last trace lines land
                    rows, offset = read_new_rows(trace, offset)
                    ttft_slo, tbt_slo = plan.slo[wname]
                    run_records[(routing, mode, wname, rate)] = records
                    results.append({
                        "routing": routing, "mode": mode, "workload": wname, "rate": rate,
                        "latency": latency.summarize(records, duration, ttft_slo, tbt_slo),
                        "experts": expert_traffic.totals(rows),
                        "expert_bounds": expert_traffic.bounds(rows), "regime": regime(rows),
                        "trace_iters": [rows[0]["iter"], rows[-1]["iter"]] if rows else None,
                        "iterations": len(rows), "duration_s": duration,
                        "energy": {**meter.result, "J_per_output_token": meter.per_output_token(
                            sum(r.output_len for r in records if r.success))},
                    })
                    traces.setdefault((routing, wname), []).append((len(results) - 1, rows))
            compress(trace)
    bar.close()
    coverage_tables = {}
    for (routing, wname), items in traces.items():
        coverage = expert_traffic.Coverage.from_traces(rows for _, rows in items)
        coverage_tables[f"{routing}/{wname}"] = {str(k): round(v, 2) for k, v in coverage.table().items()}
    report = {
        "plan": asdict(plan), "workloads": {n: w.describe() for n, w in wls.items()},
        "model": plan.model, "commit": commit, "machine": "CPU (2 cores), see benchmarks/README.md",
        "wall_time_s": time.time() - t_start, "coverage_U": coverage_tables,
        "routing_note": "'calibrated' = opt-in Zipf-skewed routing for random-weight models (not the model's own)",
        "runs": results,
    }
    if any(m.startswith("mixed-chunk-") for modes in plan.routings.values() for m in modes):
        report["families"] = {f: [m for modes in plan.routings.values() for m in modes
                                  if m.startswith(f + "-") and m.rsplit("-", 1)[1].isdigit()] for f in FAMILIES}
        report["matched_tail"] = matched_tail(run_records, report["families"], draws=200 if plan.quick else 1000)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    write_csv(report, os.path.join(out_dir, "results.csv"))
    from plots import make_plots

    make_plots(report, out_dir)
    return report


def repeated(plan: Plan, out_dir: str, times: int) -> None:
    """The plan `times` over, seeds plan.seed + 100 * i (the same for every mode within a repetition): TTFT p50 and
    token-gap p99 per repetition, their medians, and each mode's paired ratio to the plan's first mode. Odd
    repetitions run the modes in reverse order, so a machine that drifts within a repetition favours no mode."""
    from statistics import median

    per = {}  # (routing, mode, workload, rate) -> [(ttft p50, gap p99)]
    commit = _git_commit()  # before any server starts: later commits are not the code that ran
    for i in range(times):
        plan_i = Plan(**{**asdict(plan), "seed": plan.seed + 100 * i})
        if i % 2:
            plan_i.routings = {r: modes[::-1] for r, modes in plan_i.routings.items()}
        for r in run(plan_i, os.path.join(out_dir, f"rep{i}"))["runs"]:
            per.setdefault((r["routing"], r["mode"], r["workload"], r["rate"]), []).append(
                (r["latency"]["ttft_p50_s"], r["latency"]["tbt_p99_s"]))
    first = next(iter(plan.routings.values()))[0]
    summary = []
    for (routing, mode, wname, rate), values in per.items():
        base = per.get((routing, first, wname, rate))
        ratios = [(a[0] / b[0], a[1] / b[1]) for a, b in zip(values, base)] if base else []
        summary.append({"routing": routing, "mode": mode, "workload": wname, "rate": rate,
                        "ttft_p50_s": [v[0] for v in values], "tbt_p99_s": [v[1] for v in values],
                        "median_ttft_p50_s": median(v[0] for v in values),
                        "median_tbt_p99_s": median(v[1] for v in values),
                        f"ratio_to_{first}_ttft_p50": [r[0] for r in ratios],
                        f"ratio_to_{first}_tbt_p99": [r[1] for r in ratios]})
    with open(os.path.join(out_dir, "repeats.json"), "w") as f:
        json.dump({"plan": asdict(plan), "repetitions": times, "commit": commit, "summary": summary}, f,
                  indent=1)
    for s in summary:
        ratio = s[f"ratio_to_{first}_ttft_p50"]
        print(f"{s['mode']:24s} {s['workload']:13s} rate {s['rate']:<4} TTFT p50 "
              f"{' '.join(f'{v:.2f}' for v in s['ttft_p50_s'])} (median {s['median_ttft_p50_s']:.2f} s)  gap p99 "
              f"{' '.join(f'{v:.3f}' for v in s['tbt_p99_s'])} (median {s['median_tbt_p99_s']:.3f} s)  "
              f"TTFT ratio to {first}: {' '.join(f'{v:.2f}' for v in ratio)}")


def matched_tail(run_records: dict, families: Dict[str, List[str]], draws: int) -> List[dict]:
    """Each layered run's TTFT p50 over mixed-chunk prefill's frontier TTFT at the run's own token-gap p99, with a
    request-bootstrap 95% interval (sgl_layered/analysis/frontier.py), per routing, workload and rate."""
    from sgl_layered.analysis.frontier import bootstrap_matched_ratio

    out = []
    for (routing, mode, wname, rate), records in run_records.items():
        if mode in families["mixed-chunk"] or not any(mode in ms for ms in families.values()):
            continue
        base = {m: run_records[(routing, m, wname, rate)] for m in families["mixed-chunk"]
                if (routing, m, wname, rate) in run_records}
        m = bootstrap_matched_ratio(records, base, draws=draws)
        out.append({"routing": routing, "mode": mode, "workload": wname, "rate": rate,
                    "against": "mixed-chunk frontier", **m.as_dict()})
    return out


def save_records(records, path: str) -> None:
    """Every request of a run, gzipped JSON: arrival (s from the run's start), lengths, TTFT and every token gap
    (token timestamps follow: RequestRecord.token_times)."""
    import gzip

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, "wt") as f:
        json.dump([asdict(r) for r in records], f)


def load_records(path: str):
    import gzip

    from sgl_layered.analysis.latency import RequestRecord

    with gzip.open(path, "rt") as f:
        return [RequestRecord(**r) for r in json.load(f)]


def compress(path: str) -> None:
    """Gzip a finished trace in place of the plain file (traces are most of a results directory's bytes)."""
    import gzip
    import shutil

    with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.remove(path)


def write_csv(report: dict, path: str) -> None:
    rows = []
    for r in report["runs"]:
        row = {k: r[k] for k in ("routing", "mode", "workload", "rate", "iterations", "duration_s")}
        row.update(r["latency"])
        row.update({f"expert_{k}": v for k, v in r["experts"].items()})
        rows.append(row)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _git_commit() -> str:
    """HEAD, marked `+dirty` when tracked files differ from it (then the code that ran is HEAD plus those edits)."""
    from sim_report import git_state

    state = git_state()
    return state["commit"] + ("+dirty" if state["worktree_dirty"] else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few modes and requests (CI)")
    ap.add_argument("--policies", action="store_true", help="paper rule vs our policy on the bench model")
    ap.add_argument("--dense", action="store_true", help="layered vs chunked on a dense model (bench-qwen3)")
    ap.add_argument("--frontier", action="store_true",
                    help="fair baselines: every family (mixed chunk, layered paper/ours) at sizes 64..2048 and stock "
                         "with and without overlap, in the paper's regime (add --quick for the tiny CI version)")
    ap.add_argument("--trained", action="store_true",
                    help="the trained checkpoint (trained-qwen3-moe), prompts from held-out text, ShareGPT-like")
    ap.add_argument("--out", default=None, help="output directory (default benchmarks/results/<quick|default>)")
    ap.add_argument("--requests", type=int, default=None, help="requests per run")
    ap.add_argument("--modes", default=None, help="comma-separated subset of the plan's modes")
    ap.add_argument("--workloads", default=None, help="comma-separated subset of the plan's workloads")
    ap.add_argument("--seed", type=int, default=None, help="base seed of lengths, prompts and arrivals")
    ap.add_argument("--rates", default=None,
                    help="comma-separated request rates (req/s) replacing the plan's; every mode runs at each")
    ap.add_argument("--rate-scale", type=float, default=None, help="multiply every request rate of the plan")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the plan this many times, each with new seeds (every mode sees the same ones), and "
                         "report per-repetition values, medians and paired ratios against the first mode")
    args = ap.parse_args()
    os.environ.update(cpu.machine_env())  # the CPU engine only where there is no CUDA device
    name = ("frontier-quick" if args.frontier and args.quick else "frontier" if args.frontier else "quick"
            if args.quick else "policies" if args.policies else "dense" if args.dense else "trained" if args.trained
            else "default")
    plan = {"quick": quick_plan, "policies": policy_plan, "dense": dense_plan, "default": default_plan,
            "frontier": frontier_plan, "frontier-quick": frontier_quick_plan, "trained": trained_plan}[name]()
    if args.requests:
        plan.requests = args.requests
    if args.seed is not None:
        plan.seed = args.seed
    if args.rates:
        try:
            rates = [float(r) for r in args.rates.split(",")]
        except ValueError:
            ap.error(f"--rates: comma-separated numbers, got {args.rates!r}")
        if not rates or min(rates) <= 0:
            ap.error("--rates: positive request rates")
        plan.rates = {w: rates for w in plan.rates}
        plan.sweep_rates_for = [m for modes in plan.routings.values() for m in modes]
    if args.rate_scale:
        plan.rates = {w: [round(r * args.rate_scale, 3) for r in rates] for w, rates in plan.rates.items()}
    if args.workloads:
        keep = args.workloads.split(",")
        if set(keep) - set(plan.rates):
            ap.error(f"--workloads: not in the {name} plan: {sorted(set(keep) - set(plan.rates))}")
        plan.rates = {w: r for w, r in plan.rates.items() if w in keep}
    if args.modes:
        keep = args.modes.split(",")
        unknown = set(keep) - {m for modes in plan.routings.values() for m in modes}
        if unknown:
            ap.error(f"--modes: not in the {name} plan: {sorted(unknown)}")
        plan.routings = {r: [m for m in keep if m in modes] for r, modes in plan.routings.items()}
        plan.sweep_rates_for = [m for m in plan.sweep_rates_for if m in keep]
    out = args.out or os.path.join(HERE, "results", name)
    if args.repeat > 1:
        repeated(plan, out, args.repeat)
        return
    report = run(plan, out)
    print(f"\nwrote {out}/results.json, results.csv and plots ({report['wall_time_s'] / 60:.1f} min)")
    for r in report["runs"]:
        lat, ex = r["latency"], r["experts"]
        print(f"{r['routing']:10s} {r['mode']:15s} {r['workload']:13s} rate {r['rate']:<5} "
              f"TTFT p50 {lat['ttft_p50_s'] or 0:6.2f}s  TBT p99 {lat['tbt_p99_s'] or 0:6.3f}s  "
              f"SLO {lat['slo_attainment'] or 0:4.0%}  expert MB/prefill-tok "
              f"{(ex['prefill_bytes_per_token'] or 0) / 1e6:7.3f}")


if __name__ == "__main__":
    main()
