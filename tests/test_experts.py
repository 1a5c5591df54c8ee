"""Expert-load accounting is exact on a hand-checkable case; calibrated routing reproduces trained coverage."""

import asyncio

import pytest
import torch

import sgl_layered
from sgl_layered import cpu
from sgl_layered.adapter import experts
from sgl_layered.models import get_preset
from trace_checks import read
from workload import drain

TINY = get_preset("tiny-qwen3-moe")
BYTES_PER_EXPERT_FP32 = 3 * 64 * 64 * 4  # gate + up + down projections, hidden 64 x expert intermediate 64, fp32


def forced_experts(rows):
    """Experts the forced-rows routing gives rows `rows` of one MoE call."""
    return {(r * TINY.top_k + j) % TINY.num_experts for r in rows for j in range(TINY.top_k)}


def test_ledger_counts_distinct_experts_and_decode_share():
    ledger = experts.ExpertLedger(bytes_per_expert=100, routing="model")
    ids = torch.tensor([[0, 1], [1, 2], [5, 6], [6, 7], [-1, -1]])  # last row: padding
    with ledger.layout(2):
        ledger.record(3, ids, rows=4)
    taken = ledger.take()
    assert taken["layers"] == [[3, 4, 2, 6, 3]]
    assert taken["loaded_bytes"] == 600 and taken["prefill_bytes"] == 300
    assert ledger.take()["layers"] == []


def _expected_coverage(num_experts, k, alpha, n_tokens, trials=200):
    routing = experts.CalibratedRouting(alpha)
    gen = torch.Generator().manual_seed(7)
    total = 0
    for t in range(trials):
        logits = torch.randn(n_tokens, num_experts, generator=gen)
        total += torch.unique(routing.choose(t % 48, logits, k)).numel()
    return total / trials / num_experts


def test_calibrated_routing_reproduces_trained_router_coverage():
    # Qwen3-30B-A3B (128 experts, top-8): under 50% at 16 tokens, under 70% at 64, about 86% at 128.
    assert _expected_coverage(128, 8, 1.3, 16) < 0.50
    assert _expected_coverage(128, 8, 1.3, 64) < 0.72
    assert abs(_expected_coverage(128, 8, 1.3, 128) - 0.86) < 0.03


def test_calibrated_routing_is_deterministic_and_token_dependent():
    routing = experts.CalibratedRouting(1.3)
    logits = torch.randn(6, 64)
    a, b = routing.choose(2, logits, 8), routing.choose(2, logits.clone(), 8)
    assert torch.equal(a, b)
    assert all(len(set(row.tolist())) == 8 for row in a)  # k distinct experts per token
    assert not torch.equal(a[0], a[1])  # different tokens route differently
    assert not torch.equal(routing.choose(3, logits, 8), a)  # each layer has its own popular experts


@pytest.mark.engine
def test_accounting_exact_with_forced_routing(model_path, tmp_path):
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), enable_layered_prefill=True,
                                layered_prefill_groups=TINY.num_layers, layered_prefill_trace=str(trace),
                                layered_prefill_expert_accounting=True, layered_prefill_routing="forced-rows",
                                **cpu.engine_kwargs())

    async def run():
        async def one(delay, ids, n):
            await asyncio.sleep(delay)
            return await engine.async_generate(input_ids=ids, sampling_params={
                "max_new_tokens": n, "temperature": 0.0, "ignore_eos": True})
        return await asyncio.gather(one(0, [11, 12, 13], 60), one(0.3, [21, 22], 4))

    try:
        engine.loop.run_until_complete(run())
        drain(engine)
    finally:
        engine.shutdown()
    rows = read(trace)
    assert rows and all(r["experts"]["routing"] == "forced-rows" for r in rows)
    fused_seen = 0
    for r in rows:
        acc = r["experts"]
        assert acc["bytes_per_expert"] == BYTES_PER_EXPERT_FP32
        prompt = sum(p["tokens"] for p in r["prefill"])
        group = range(*r["prefill"][0]["layers"]) if r["prefill"] else range(0)
        assert [c[0] for c in acc["layers"]] == (list(range(TINY.num_layers)) if r["decode_rows"] else list(group))
        for layer, rows_, prefill_rows, distinct, distinct_decode in acc["layers"]:
            in_group = layer in group
            assert prefill_rows == (prompt if in_group else 0)
            assert rows_ == prefill_rows + r["decode_rows"]
            assert distinct == len(forced_experts(range(rows_)))
            assert distinct_decode == len(forced_experts(range(prefill_rows, rows_)))
        assert acc["loaded_bytes"] == sum(c[3] for c in acc["layers"]) * BYTES_PER_EXPERT_FP32
        assert acc["prefill_bytes"] == sum(c[3] - c[4] for c in acc["layers"] if c[2]) * BYTES_PER_EXPERT_FP32
        if r["prefill"] and r["decode_rows"]:
            fused_seen += 1
            # 2 prompt rows + 1 decode row: experts {0..5} in the group's layer, {4, 5} for the decode row alone.
            (layer_call,) = [c for c in acc["layers"] if c[2]]
            assert layer_call[1:] == [3, 2, 6, 2]
            assert r["prefill"][0]["expert_bytes"] == 4 * BYTES_PER_EXPERT_FP32
    assert fused_seen == TINY.num_layers  # the second prompt ran its 5 one-layer groups fused with decode


@pytest.mark.engine
def test_prometheus_counters_with_enable_metrics(model_path, tmp_path):
    """With SGLang's --enable-metrics, expert accounting is exported as Prometheus counters on /metrics."""
    import re

    import requests

    from server import Server

    args = ["--enable-layered-prefill", "--layered-prefill-expert-accounting", "--enable-metrics"]
    with Server(model_path("tiny-qwen3-moe"), args, log_path=tmp_path / "server.log") as server:
        r = requests.post(server.url + "/generate", timeout=120, json={
            "input_ids": list(range(10, 110)), "sampling_params": {"max_new_tokens": 4, "temperature": 0.0}})
        r.raise_for_status()
        requests.get(server.url + "/get_server_info", timeout=60)  # drain: the iteration's counters are added
        text = requests.get(server.url + "/metrics", timeout=60).text

    def value(name):
        found = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
        assert found, f"{name} missing from /metrics"
        return sum(float(v) for v in found)

    assert value("sglang_layered_prefill_tokens_total") >= 100  # the warm-up request adds its own tokens
    assert value("sglang_layered_expert_prefill_bytes_total") > 0
    assert value("sglang_layered_expert_loaded_bytes_total") >= value("sglang_layered_expert_prefill_bytes_total")
