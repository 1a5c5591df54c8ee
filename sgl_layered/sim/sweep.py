"""Simulated serving runs and rate sweeps: same workloads, metrics and SLO rule as the CPU benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from sgl_layered.analysis import latency, workloads
from sgl_layered.core.adaptive import AdaptivePolicy, Switches
from sgl_layered.core.paper import PaperPolicy

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
                    "busy_s": res.busy_s, "cohort_kinds": res.cohort_kinds})
    return summary


def max_slo_rate(cost: CostModel, mode: str, sc: Scenario, rates: List[float], **kw) -> Dict[str, object]:
    """Highest rate in `rates` (ascending) at which >= 90% of requests meet the SLO, and every run's summary."""
    runs = [simulate(cost, mode, sc, r, **kw) for r in rates]
    ok = [r["rate"] for r in runs if r["slo_met"]]
    return {"mode": mode, "max_slo_rate": max(ok) if ok else 0.0, "runs": runs}
