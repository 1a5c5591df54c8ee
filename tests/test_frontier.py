"""Invariants of the matched-tail comparison (sgl_layered/analysis/frontier.py) before any number from it is
published: the frontier keeps only undominated settings, the interpolation hits measured points exactly and
refuses to extrapolate, a family compared with itself gives 1 inside its interval, and scaling one side's TTFT
scales the ratio."""

import os
import random
import sys

from sgl_layered.analysis.frontier import (Point, bootstrap_matched_ratio, matched_ratio, paired_ratio_ci, pareto,
                                           point, ttft_at)
from sgl_layered.analysis.latency import RequestRecord


def _run(ttft, gap, n=60, seed=0, scale=1.0):
    rng = random.Random(seed)
    return [RequestRecord(ttft=scale * ttft * rng.uniform(0.8, 1.2), gaps=[gap * rng.uniform(0.5, 1.0) for _ in range(20)],
                          e2e=1.0, prompt_len=100, output_len=21, success=True) for _ in range(n)]


FAMILY = {"64": (4.0, 0.10), "256": (2.0, 0.20), "1024": (1.0, 0.40)}  # small chunks: short gaps, late first tokens


def _family(scale=1.0, seed=0):
    return {s: _run(t, g, seed=seed + i, scale=scale) for i, (s, (t, g)) in enumerate(FAMILY.items())}


def test_pareto_drops_dominated_points():
    pts = [Point("a", 0.1, 4.0), Point("b", 0.2, 5.0), Point("c", 0.3, 1.0), Point("d", 0.05, 9.0)]
    assert [p.setting for p in pareto(pts)] == ["d", "a", "c"]


def test_interpolation_exact_at_points_and_never_extrapolates():
    front = pareto([Point("a", 0.1, 4.0), Point("b", 0.3, 2.0)])
    assert ttft_at(front, 0.1) == 4.0 and ttft_at(front, 0.3) == 2.0
    assert abs(ttft_at(front, 0.2) - 3.0) < 1e-12
    assert ttft_at(front, 0.05) is None and ttft_at(front, 0.31) is None


def test_a_family_against_itself_is_one_and_scaling_scales():
    base = _family()
    for setting, records in base.items():
        assert abs(matched_ratio(records, base) - 1.0) < 1e-9
    faster = _family(scale=0.5)
    for setting in base:
        assert abs(matched_ratio(faster[setting], base) - 0.5) < 1e-9
    m = bootstrap_matched_ratio(base["256"], base, draws=200)
    assert m.low <= 1.0 <= m.high and m.matched_draws > 0.5


def test_outside_the_base_range_is_unmatched():
    base = _family()
    assert matched_ratio(_run(1.0, 2.0), base) is None  # a tail the base family never showed
    assert point("x", []) is None


def test_paired_ratio_keeps_pairs():
    pairs = [(1.0, 2.0), (1.1, 2.0), (0.9, 2.1), (1.0, 1.9), (1.2, 2.2)]
    r = paired_ratio_ci(pairs, draws=500)
    assert abs(r["ratio"] - 0.5) < 1e-9 and r["ci95"][0] <= 0.5 <= r["ci95"][1] and r["wins"] == 5


def _benchmarks_on_path():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)


def test_benchmark_reports_matched_tail_and_plots_the_frontier(tmp_path):
    """benchmarks/ablation.py's frontier report on synthetic records: each layered run is matched against the
    mixed-chunk family, and the frontier plot is drawn (the servers themselves run in `ablation.py --frontier`)."""
    _benchmarks_on_path()
    import ablation
    import plots

    families = {"mixed-chunk": ["mixed-chunk-64", "mixed-chunk-256", "mixed-chunk-1024"],
                "layered-paper": ["layered-paper-256"], "layered-ours": []}
    records = {("calibrated", m, "w", 1.0): _run(t, g, seed=i) for i, (m, (t, g)) in
               enumerate(zip(families["mixed-chunk"], FAMILY.values()))}
    records[("calibrated", "layered-paper-256", "w", 1.0)] = _run(1.0, 0.2, seed=9)
    records[("calibrated", "sglang-default", "w", 1.0)] = _run(0.5, 2.0, seed=10)
    (m,) = ablation.matched_tail(records, families, draws=100)
    assert m["mode"] == "layered-paper-256" and 0.4 < m["ratio"] < 0.6 and m["ci95"][0] < m["ratio"] < m["ci95"][1]

    def summary(recs):
        p = point("x", recs)
        return {"tbt_p99_s": p.gap_p99, "ttft_p50_s": p.ttft_p50}

    report = {"model": "synthetic", "commit": "test", "plan": {"rates": {"w": [1.0]}}, "families": families,
              "runs": [{"mode": k[1], "workload": "w", "latency": summary(v)} for k, v in records.items()]}
    assert os.path.getsize(plots.frontier(report, str(tmp_path))) > 10_000
    path = str(tmp_path / "r.json.gz")
    ablation.save_records(records[("calibrated", "sglang-default", "w", 1.0)], path)
    assert ablation.load_records(path) == records[("calibrated", "sglang-default", "w", 1.0)]


def test_token_times_follow_arrival_ttft_and_gaps():
    r = RequestRecord(ttft=0.5, gaps=[0.1, 0.2], e2e=0.8, prompt_len=3, output_len=3, success=True, arrival=2.0)
    assert r.token_times() == [2.5, 2.6, 2.8000000000000003] and len(r.token_times()) == r.output_len


def test_text_prompts_are_seeded_windows_of_the_stream():
    _benchmarks_on_path()
    import load

    stream = list(range(100, 150))
    lengths = [(7, 1), (50, 1), (120, 1)]
    a, b = load.text_prompts(lengths, stream, seed=3), load.text_prompts(lengths, stream, seed=3)
    assert a == b and [len(p) for p in a] == [7, 50, 120]
    for p in a:  # consecutive tokens of the stream, read round and round
        assert all(stream[(stream.index(p[0]) + i) % len(stream)] == t for i, t in enumerate(p))
    assert load.text_prompts(lengths, stream, seed=4) != a


def test_plan_refuses_an_unknown_prompt_source():
    import pytest

    _benchmarks_on_path()
    import ablation

    assert ablation.trained_plan().prompts == "heldout-text"
    with pytest.raises(ValueError, match="heldout-text"):
        ablation.Plan(**{**vars(ablation.trained_plan()), "prompts": "fortunes"})


def test_client_waits_are_send_times_against_the_schedule():
    import pytest

    from sgl_layered.analysis.latency import client_waits

    recs = [RequestRecord(ttft=0.1, gaps=[], e2e=0.1, prompt_len=1, output_len=1, success=True, arrival=a)
            for a in (0.0, 1.5, 2.0)]
    assert client_waits(recs, [0.0, 0.5, 2.0]) == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        client_waits(recs, [0.0])
