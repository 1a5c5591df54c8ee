"""Benchmark analysis: workloads, latency/SLO rules, coverage and expert-traffic counting."""

import statistics

import pytest

from sgl_layered.analysis import expert_traffic, latency, workloads


def test_workloads_match_documented_means():
    share = workloads.sharegpt().sample(20000, seed=1)
    assert abs(statistics.mean(p for p, _ in share) - 2340) / 2340 < 0.03
    assert abs(statistics.mean(o for _, o in share) - 439) / 439 < 0.03
    arx = workloads.arxiv().sample(20000, seed=1)
    assert abs(statistics.mean(p for p, _ in arx) - 9194) / 9194 < 0.03
    assert max(o for _, o in arx) <= 512
    scaled = workloads.sharegpt(prompt_scale=1 / 8).sample(2000, seed=1)
    assert abs(statistics.mean(p for p, _ in scaled) - 2340 / 8) / (2340 / 8) < 0.05
    assert workloads.sharegpt().sample(5, seed=3) == workloads.sharegpt().sample(5, seed=3)


def test_poisson_arrivals_have_the_rate():
    t = workloads.poisson_arrivals(20000, rate=2.0, seed=4)
    assert t[0] == 0 and all(b >= a for a, b in zip(t, t[1:]))
    assert abs(t[-1] / len(t) - 0.5) < 0.02


def test_slo_requires_ttft_and_every_gap():
    recs = [
        latency.RequestRecord(ttft=1.0, gaps=[0.1, 0.1], e2e=1.2, prompt_len=5, output_len=3, success=True),
        latency.RequestRecord(ttft=1.0, gaps=[0.1, 0.9], e2e=2.0, prompt_len=5, output_len=3, success=True),
        latency.RequestRecord(ttft=3.0, gaps=[0.1], e2e=3.1, prompt_len=5, output_len=2, success=True),
        latency.RequestRecord(ttft=0.0, gaps=[], e2e=0.0, prompt_len=5, output_len=0, success=False),
    ]
    s = latency.summarize(recs, duration_s=4.0, ttft_slo=2.0, tbt_slo=0.5)
    assert s["slo_attainment"] == 0.25 and not s["slo_met"]
    assert s["errors"] == 1 and s["tbt_max_s"] == 0.9
    assert s["goodput_req_s"] == 0.25 and s["throughput_tok_s"] == 8 / 4.0
    assert latency.percentile([1, 2, 3, 4], 50) == 2.5


def _row(layers, prefill, decode_rows=0):
    return {"decode_rows": decode_rows, "prefill": prefill,
            "experts": {"bytes_per_expert": 10, "layers": layers,
                        "loaded_bytes": sum(c[3] for c in layers) * 10,
                        "prefill_bytes": sum(c[3] - c[4] for c in layers if c[2]) * 10}}


def test_coverage_curve():
    rows = [_row([[0, 1, 0, 2, 2], [0, 4, 4, 6, 0], [0, 16, 16, 8, 0]], [{"rids": ["a"], "tokens": 4,
                                                                          "layers": [0, 1]}])]
    cov = expert_traffic.Coverage.from_traces([rows])
    assert cov.at(0, 1) == 2 and cov.at(0, 16) == 8 and cov.at(0, 100) == 8
    assert cov.at(0, 2) == pytest.approx(4.0)  # halfway between 1 and 4 rows in log n


def test_per_request_attribution_splits_by_tokens():
    rows = [_row([[0, 6, 6, 5, 0]], [{"rids": ["a", "b"], "tokens": 6, "req_tokens": [2, 4], "layers": [0, 1],
                                       "expert_bytes": 60}])]
    per = expert_traffic.per_request(rows)
    assert per["a"]["bytes"] == 20 and per["b"]["bytes"] == 40 and per["b"]["tokens"] == 4
    t = expert_traffic.totals(rows)
    assert t["prefill_bytes"] == 50 and t["prefill_bytes_per_token"] == 50 / 6


def test_layered_cohort_tokens_count_once_whatever_the_group_count():
    """A cohort of 6 tokens over 3 layers is one piece per group pass; its tokens count once, so per-token
    figures do not shrink with G (they did: the tokens were added once per pass)."""
    one_pass = [_row([[0, 6, 6, 4, 0], [1, 6, 6, 4, 0], [2, 6, 6, 4, 0]],
                     [{"rids": ["a"], "tokens": 6, "req_tokens": [6], "layers": [0, 3], "expert_bytes": 120}])]
    three_passes = [_row([[layer, 6, 6, 4, 0]], [{"rids": ["a"], "tokens": 6, "req_tokens": [6],
                                                  "layers": [layer, layer + 1], "expert_bytes": 40}])
                    for layer in range(3)]
    for rows in (one_pass, three_passes):
        t = expert_traffic.totals(rows)
        assert t["prefill_tokens"] == 6 and t["prefill_bytes"] == 120 and t["prefill_bytes_per_token"] == 20
        per = expert_traffic.per_request(rows)["a"]
        assert per["tokens"] == 6 and per["bytes"] == 120
    # Chunks (stock or hybrid) each cross layer 0 once: every chunk's tokens count.
    chunks = [_row([[0, 3, 3, 2, 0]], [{"rids": ["a"], "tokens": 3, "layers": [0, 1]}]) for _ in range(2)]
    assert expert_traffic.totals(chunks)["prefill_tokens"] == 6
