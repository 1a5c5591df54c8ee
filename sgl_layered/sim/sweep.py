"""Simulated serving runs and rate sweeps: same workloads, metrics and SLO rule as the CPU benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from sgl_layered.analysis import latency, workloads
from sgl_layered.core.adaptive import AdaptivePolicy, Switches
from sgl_layered.core.paper import PaperPolicy

from sgl_layered.core.hardware import Hardware
from sgl_layered.core.roofline import CostModel
from .engine import SimRequest, Simulator


@dataclass(frozen=True)
class Scenario:
    workload: workloads.Workload
    ttft_slo_s: float
    tbt_slo_s: float
    requests: int = 1000
    seed: int = 0


def make_requests(sc: Scenario, rate: float) -> List[SimRequest]:
    lengths = sc.workload.sample(sc.requests, seed=sc.seed)
    arrivals = workloads.poisson_arrivals(sc.requests, rate, seed=sc.seed + 1)
    return [SimRequest(i, a, p, o) for i, (a, (p, o)) in enumerate(zip(arrivals, lengths))]


def policy_factory(mode: str, sc: Scenario, switches: Optional[Switches] = None,
                   cost: Optional[CostModel] = None, chunk_tokens: Optional[int] = None) -> Callable[[], object]:
    """layered-ours chooses layered or chunked execution per cohort with the simulator's own cost model as its
    predictor (on hardware: the same roofline model with that machine's profile)."""
    if mode == "layered-paper":
        return lambda: PaperPolicy(groups=None, tokens_per_group=512, chunk_tokens=chunk_tokens)
    if mode in ("layered-ours", "layered-ours-nochoose"):
        if mode == "layered-ours-nochoose":  # (f) off: always layered, bites sized by the TBT target alone
            switches = Switches(choose=False)
        # Aim iterations a little under the token-gap SLO so queueing noise stays inside it.
        return lambda: AdaptivePolicy(tbt_target_s=0.8 * sc.tbt_slo_s, switches=switches or Switches(),
                                      predict_seconds=cost.seconds if cost is not None else None,
                                      layer_costs=cost.layer_costs(512) if cost is not None else None,
                                      chunk_tokens=chunk_tokens)
    raise ValueError(mode)


def energy_summary(hw: Hardware, hbm_bytes: float, flops: float, expert_bytes: float,
                   output_tokens: int) -> Optional[dict]:
    """Dynamic energy of a run from the profile's per-byte and per-FLOP figures (None if it states none): totals,
    the expert-weight share of the byte energy, and per output token. Static/idle power is not modelled."""
    e = hw.dynamic_energy_j(hbm_bytes, flops)
    if e is None:
        return None
    e["expert_byte_J"] = expert_bytes * hw.j_per_byte
    e["output_tokens"] = output_tokens
    per = (lambda j: 1e3 * j / output_tokens) if output_tokens else (lambda j: None)  # noqa: E731
    e.update({"mJ_per_output_token": per(e["dynamic_J"]), "byte_mJ_per_output_token": per(e["byte_J"]),
              "flop_mJ_per_output_token": per(e["flop_J"]),
              "expert_byte_mJ_per_output_token": per(e["expert_byte_J"]),
              "source": hw.energy_source, "static": "not modelled (no sourced idle-power figure in the profile)"})
    return e


def simulate(cost: CostModel, mode: str, sc: Scenario, rate: float, chunk: int = 512,
             kv_capacity_tokens: int = 10 ** 9, switches: Optional[Switches] = None,
             layered_chunk: Optional[int] = None) -> dict:
    reqs = make_requests(sc, rate)
    if mode.startswith("chunked"):
        sim = Simulator(cost, "chunked", chunk=chunk, kv_capacity_tokens=kv_capacity_tokens)
    else:
        sim = Simulator(cost, "layered", policy=policy_factory(mode, sc, switches, cost, layered_chunk)(),
                        kv_capacity_tokens=kv_capacity_tokens)
    res = sim.run(reqs)
    end = max(r.done or r.arrival for r in res.requests)
    records = []
    for r in res.requests:
        times = r.token_times
        records.append(latency.RequestRecord(
            ttft=(r.first_token - r.arrival) if r.first_token is not None else float("inf"),
            gaps=[b - a for a, b in zip(times, times[1:])], e2e=(r.done or end) - r.arrival,
            prompt_len=r.prompt, output_len=len(times), success=r.done is not None))
    summary = latency.summarize(records, end - min(r.arrival for r in res.requests), sc.ttft_slo_s, sc.tbt_slo_s)
    summary.update({"mode": mode, "rate": rate, "iterations": res.iterations, "expert_bytes": res.expert_bytes,
                    "prefill_expert_bytes": res.prefill_expert_bytes, "prefill_tokens": res.prefill_tokens,
                    "busy_s": res.busy_s, "cohort_kinds": res.cohort_kinds, "hbm_bytes": res.hbm_bytes,
                    "flops": res.flops,
                    "energy": energy_summary(cost.hw, res.hbm_bytes, res.flops, res.expert_bytes,
                                             sum(len(r.token_times) for r in res.requests))})
    return summary


def slo_crossing(runs: List[dict]) -> Dict[str, object]:
    """Where SLO attainment crosses the goal (90%) above the highest passing rate, by linear interpolation between
    that rate and the next swept one: an estimate between grid points, not a measured rate. `censored` when no
    swept rate above the highest passing one fails (the true crossing may lie beyond the grid)."""
    runs = sorted(runs, key=lambda r: r["rate"])
    passing = [r for r in runs if r["slo_met"]]
    if not passing:
        return {"rate": 0.0, "censored": False}
    p = passing[-1]
    above = [r for r in runs if r["rate"] > p["rate"]]
    if not above:
        return {"rate": p["rate"], "censored": True}
    f, goal = above[0], p["slo_goal"]
    span = p["slo_attainment"] - f["slo_attainment"]
    frac = (p["slo_attainment"] - goal) / span if span > 0 else 0.0
    return {"rate": p["rate"] + min(max(frac, 0.0), 1.0) * (f["rate"] - p["rate"]), "censored": False}


def max_slo_rate(cost: CostModel, mode: str, sc: Scenario, rates: List[float],
                 stop_after_failures: Optional[int] = None, **kw) -> Dict[str, object]:
    """Highest rate in `rates` (ascending) at which >= 90% of requests meet the SLO, the interpolated crossing
    (slo_crossing) and every run's summary. stop_after_failures=n: stop once n consecutive rates miss the SLO
    (attainment falls with load; saves the overloaded runs in wide sweeps)."""
    runs, misses = [], 0
    for r in rates:
        runs.append(simulate(cost, mode, sc, r, **kw))
        misses = 0 if runs[-1]["slo_met"] else misses + 1
        if stop_after_failures and misses >= stop_after_failures:
            break
    ok = [r["rate"] for r in runs if r["slo_met"]]
    return {"mode": mode, "max_slo_rate": max(ok) if ok else 0.0, "slo_crossing": slo_crossing(runs), "runs": runs}


CHUNK_SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


def best_tuned_chunked(cost: CostModel, sc: Scenario, rates: List[float], chunks: Sequence[int] = CHUNK_SIZES,
                       known: Optional[Dict[int, dict]] = None, stop_after_failures: Optional[int] = 2,
                       **kw) -> Dict[str, object]:
    """The best-tuned stall-free baseline: mixed chunked prefill at the chunk size (of `chunks`) with the highest
    SLO-attaining rate on this workload and SLO; ties (rates are a grid) go to the higher interpolated crossing
    (slo_crossing), then to the smaller chunk. `known`: sweeps already run, by chunk size (max_slo_rate results),
    reused rather than rerun. Sweeps stop after `stop_after_failures` consecutive misses."""
    sweeps = {c: (known or {}).get(c) or max_slo_rate(cost, f"chunked-{c}", sc, rates, chunk=c,
                                                      stop_after_failures=stop_after_failures, **kw)
              for c in chunks}
    best = max(chunks, key=lambda c: (sweeps[c]["max_slo_rate"], sweeps[c]["slo_crossing"]["rate"], -c))
    return {"best_chunk": best, "max_slo_rate": sweeps[best]["max_slo_rate"],
            "slo_crossing": sweeps[best]["slo_crossing"],
            "by_chunk": {c: {"max_slo_rate": sweeps[c]["max_slo_rate"], "slo_crossing": sweeps[c]["slo_crossing"]}
                         for c in chunks}, "sweeps": sweeps}
