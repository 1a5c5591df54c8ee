"""Latency metrics of one benchmark run: TTFT, every token gap (TBT), E2E, throughput, SLO attainment.

SLO rule (the paper's): a request passes only if its TTFT and *every* one of its token gaps meet the targets;
a run meets the SLO when at least `goal` (90%) of its requests pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass
class RequestRecord:
    ttft: float
    gaps: List[float]
    e2e: float
    prompt_len: int
    output_len: int
    success: bool
    error: str = ""
    arrival: float = 0.0  # seconds from the run's start to the request's send; tokens come at arrival + ttft + gaps

    def token_times(self) -> List[float]:
        """Each output token's time from the run's start (the first at arrival + TTFT, then every gap)."""
        t = self.arrival + self.ttft
        out = [t]
        for g in self.gaps:
            t += g
            out.append(t)
        return out


def client_waits(records: List[RequestRecord], scheduled: List[float]) -> List[float]:
    """Seconds each request waited in the client before it was sent (`arrival` is the send time; `scheduled` the
    open-loop arrival schedule, same order). TTFT is measured from sending, as SGLang's client measures it, so a
    client-side concurrency limit that binds hides queueing from TTFT: these must stay near zero for TTFT to be the
    latency a user would see."""
    if len(records) != len(scheduled):
        raise ValueError(f"{len(records)} records for {len(scheduled)} scheduled arrivals")
    return [r.arrival - s for r, s in zip(records, scheduled)]


def percentile(values: List[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def summarize(records: List[RequestRecord], duration_s: float, ttft_slo: float, tbt_slo: float,
              goal: float = 0.9) -> Dict[str, Optional[float]]:
    ok = [r for r in records if r.success]
    ttfts = [r.ttft for r in ok]
    gaps = [g for r in ok for g in r.gaps]
    e2es = [r.e2e for r in ok]
    passed = [r for r in ok if r.ttft <= ttft_slo and all(g <= tbt_slo for g in r.gaps)]
    attainment = len(passed) / len(records) if records else None
    out_tokens = sum(r.output_len for r in ok)
    return {
        "requests": len(records), "errors": len(records) - len(ok),
        "ttft_mean_s": mean(ttfts), "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
        "tbt_p50_s": percentile(gaps, 50), "tbt_p99_s": percentile(gaps, 99), "tbt_max_s": max(gaps) if gaps else None,
        "e2e_mean_s": mean(e2es), "e2e_p50_s": percentile(e2es, 50), "e2e_p99_s": percentile(e2es, 99),
        "throughput_req_s": len(ok) / duration_s if duration_s > 0 else None,
        "throughput_tok_s": out_tokens / duration_s if duration_s > 0 else None,
        "slo_attainment": attainment,
        "slo_met": attainment is not None and attainment >= goal,
        "goodput_req_s": len(passed) / duration_s if duration_s > 0 else None,
        "ttft_slo_s": ttft_slo, "tbt_slo_s": tbt_slo, "slo_goal": goal,
    }
