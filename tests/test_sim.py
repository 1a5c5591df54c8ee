"""Simulator and cost model: sanity of the cost model, and the paper-scale claim at a reduced size."""

import pytest

from sgl_layered.analysis import workloads
from sgl_layered.core.roofline import CostModel, PromptWork, coverage
from sgl_layered.core.hardware import H100
from sgl_layered.core.shapes import MODELS
from sgl_layered.sim.sweep import Scenario, max_slo_rate

QWEN = MODELS["Qwen3-30B-A3B"]


def test_uniform_coverage_matches_closed_form():
    for n in (1, 16, 64, 512):
        assert coverage(128, 8, None, n) == pytest.approx(128 * (1 - (1 - 8 / 128) ** n))


def test_zipf_coverage_is_lower_and_reproduces_trained_router_figures():
    c16, c64, c128 = (coverage(128, 8, 1.3, n) / 128 for n in (16, 64, 128))
    assert c16 < 0.5 and c64 < 0.72 and abs(c128 - 0.86) < 0.03
    assert all(coverage(128, 8, 1.3, n) < coverage(128, 8, None, n) for n in (8, 32, 128))


def test_cost_model_behaves():
    one, two = CostModel(QWEN, H100, tp=1), CostModel(QWEN, H100, tp=2)
    decode = [2000] * 32
    small = one.iteration(decode, [PromptWork(512, 0, (0, 48))])
    big = one.iteration(decode, [PromptWork(4096, 0, (0, 48))])
    assert big.seconds > small.seconds > one.iteration(decode, []).seconds
    assert two.iteration(decode, [PromptWork(4096, 0, (0, 48))]).seconds < big.seconds
    # Chunking a prompt reloads experts once per chunk; one layered pass loads each once per layer.
    chunks = sum(one.iteration(decode, [PromptWork(512, 512 * i, (0, 48))]).prefill_expert_bytes for i in range(8))
    layered = one.iteration(decode, [PromptWork(4096, 0, (0, 48))]).prefill_expert_bytes
    assert layered < chunks / 3
    # A layer range costs only its layers.
    half = one.iteration([], [PromptWork(4096, 0, (0, 24))]).seconds
    assert half == pytest.approx(one.iteration([], [PromptWork(4096, 0, (24, 48))]).seconds)


@pytest.mark.parametrize("workload,ttft_slo,rates", [
    (workloads.arxiv, 10.0, [1, 2, 4, 8]),
    (workloads.sharegpt, 5.0, [4, 8, 16, 32]),
])
def test_our_policy_sustains_at_least_the_paper_rule_rate(workload, ttft_slo, rates):
    cost = CostModel(QWEN, H100, tp=2, alpha=1.3, overhead_s=0.002)
    sc = Scenario(workload(), ttft_slo, 0.125, requests=200)
    paper = max_slo_rate(cost, "layered-paper", sc, rates, kv_capacity_tokens=700_000)
    ours = max_slo_rate(cost, "layered-ours", sc, rates, kv_capacity_tokens=700_000)
    assert ours["max_slo_rate"] >= paper["max_slo_rate"] > 0
    for run in ours["runs"]:
        if run["slo_met"]:
            assert run["tbt_p99_s"] <= 0.125
