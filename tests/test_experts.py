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


def test_ledger_records_expert_sets_per_request_and_decode_rows():
    ledger = experts.ExpertLedger(bytes_per_expert=100, routing="model")
    ids = torch.tensor([[0, 1], [1, 2], [5, 6], [6, 7], [-1, -1]])  # two prompt rows, two decode rows, padding
    ledger.open_frame(experts.DECODE_ONLY)
    with ledger.layout(experts.RowLayout(("a",), (2,))):
        ledger.record(3, ids, rows=4)
    ledger.record(4, ids, rows=4)  # outside the fused layer: every row a decode row
    taken = ledger.take()
    assert taken["layers"] == [[3, 4, 2, 6, 3, "e0", {"a": "7"}], [4, 4, 0, 6, 6, "e7", {}]]
    assert taken["loaded_bytes"] == 1200 and taken["prefill_bytes"] == 300
    assert ledger.take()["layers"] == []


def test_ledger_keeps_each_forward_apart_under_the_overlap_loop():
    """SGLang's overlap loop launches forward k+1 before it processes forward k's results: each record must carry
    its own forward's calls."""
    ledger = experts.ExpertLedger(bytes_per_expert=1, routing="model")
    ledger.open_frame(experts.RowLayout(("p",), (1,)))
    ledger.record(0, torch.tensor([[0, 1]]))
    ledger.open_frame(experts.DECODE_ONLY)  # the next forward is launched before the first is processed
    ledger.record(0, torch.tensor([[2, 3]]))
    first, second = ledger.take(), ledger.take()
    assert first["layers"] == [[0, 1, 1, 2, 0, "0", {"p": "3"}]] and first["prefill_bytes"] == 2
    assert second["layers"] == [[0, 1, 0, 2, 2, "c", {}]] and second["prefill_bytes"] == 0


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
        for layer, rows_, prefill_rows, distinct, distinct_decode, decode_set, prompt_sets in acc["layers"]:
            in_group = layer in group
            assert prefill_rows == (prompt if in_group else 0)
            assert rows_ == prefill_rows + r["decode_rows"]
            assert distinct == len(forced_experts(range(rows_)))
            assert distinct_decode == len(forced_experts(range(prefill_rows, rows_)))
            assert int(decode_set, 16) == sum(1 << e for e in forced_experts(range(prefill_rows, rows_)))
            assert int(prompt_sets.get(r["prefill"][0]["rids"][0], "0"), 16) if prefill_rows else not prompt_sets
            if prefill_rows:
                (bits,) = prompt_sets.values()
                assert int(bits, 16) == sum(1 << e for e in forced_experts(range(prefill_rows)))
        assert acc["loaded_bytes"] == sum(c[3] for c in acc["layers"]) * BYTES_PER_EXPERT_FP32
        assert acc["prefill_bytes"] == sum(c[3] - c[4] for c in acc["layers"] if c[2]) * BYTES_PER_EXPERT_FP32
        if r["prefill"] and r["decode_rows"]:
            fused_seen += 1
            # 2 prompt rows + 1 decode row: experts {0..5} in the group's layer, {4, 5} for the decode row alone.
            (layer_call,) = [c for c in acc["layers"] if c[2]]
            assert layer_call[1:5] == [3, 2, 6, 2]
            assert r["prefill"][0]["expert_bytes"] == 4 * BYTES_PER_EXPERT_FP32
    assert fused_seen == TINY.num_layers  # the second prompt ran its 5 one-layer groups fused with decode


ONE_AT_A_TIME = [300, 150, 77]  # prompt lengths, each prefilled alone (nothing else running)


def _one_at_a_time(model_path, trace, **kw):
    """The same prompts, one request at a time, with expert accounting; returns the trace rows and the responses."""
    from workload import greedy, prompts

    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), layered_prefill_trace=str(trace),
                                layered_prefill_expert_accounting=True, **cpu.engine_kwargs(**kw))
    try:
        outs = [engine.generate(input_ids=ids, sampling_params=greedy(4))
                for ids in prompts(lengths=ONE_AT_A_TIME)]
        drain(engine)
    finally:
        engine.shutdown()
    return read(trace), outs


@pytest.mark.engine
def test_expert_bytes_do_not_depend_on_the_group_count(model_path, tmp_path):
    """Each prompt token is counted once, and the same prompts load the same expert bytes whether their cohort
    crosses the 5 layers in one pass or in five: each layer sees the whole prompt once either way. Chunked prefill
    with small chunks reloads each layer's experts once per chunk."""
    from sgl_layered.analysis import expert_traffic

    runs = {
        "G=1": _one_at_a_time(model_path, tmp_path / "g1.jsonl", enable_layered_prefill=True,
                              layered_prefill_groups=1),
        "G=N": _one_at_a_time(model_path, tmp_path / "gn.jsonl", enable_layered_prefill=True,
                              layered_prefill_groups=TINY.num_layers),
        "chunk-32": _one_at_a_time(model_path, tmp_path / "c32.jsonl", chunked_prefill_size=32,
                                   disable_overlap_schedule=True),
    }
    totals = {}
    for name, (rows, outs) in runs.items():
        t = totals[name] = expert_traffic.totals(rows)
        new_tokens = sum(o["meta_info"]["prompt_tokens"] - o["meta_info"]["cached_tokens"]
                         for o in outs)
        assert t["prefill_tokens"] == new_tokens, (name, t)
        per = expert_traffic.per_request(rows)
        assert sorted(r["tokens"] for r in per.values()) == sorted(
            o["meta_info"]["prompt_tokens"] - o["meta_info"]["cached_tokens"] for o in outs), name
    passes = [r for r in runs["G=N"][0] if r["prefill"]]
    assert len(passes) == len(ONE_AT_A_TIME) * TINY.num_layers  # G > 1: one piece per group pass
    # Prompt work per iteration in full-depth tokens: a run's iterations sum to its new prompt tokens in every mode;
    # a chunk never carries more than its size, a one-layer pass 1/N of its cohort.
    from sgl_layered.analysis.regime import prompt_work

    for name, (rows, _) in runs.items():
        assert sum(prompt_work(rows)) == pytest.approx(totals[name]["prefill_tokens"]), name
    assert max(prompt_work(runs["chunk-32"][0])) <= 32
    assert max(prompt_work(passes)) == pytest.approx(max(p["tokens"] for r in passes for p in r["prefill"])
                                                     / TINY.num_layers)
    g1, gn, chunked = (totals[k] for k in ("G=1", "G=N", "chunk-32"))
    assert gn["loaded_bytes"] == pytest.approx(g1["loaded_bytes"], rel=0.01)
    assert gn["prefill_bytes_per_token"] == pytest.approx(g1["prefill_bytes_per_token"], rel=0.01)
    assert chunked["loaded_bytes"] > 1.5 * g1["loaded_bytes"]
    assert chunked["prefill_bytes_per_token"] > 1.5 * g1["prefill_bytes_per_token"]
    # The floors come from the prompts' own routing: the same in every mode. Each prompt alone in one pass is what
    # layered prefill pays here (nothing decodes beside it); chunks reload per chunk.
    b = {name: expert_traffic.bounds(rows) for name, (rows, _) in runs.items()}
    for key in ("prompt_floor", "one_pass_each"):
        assert b["G=N"][key] == b["G=1"][key] == b["chunk-32"][key], key
    assert b["G=1"]["prompt"] == b["G=N"]["prompt"] == b["G=1"]["one_pass_each"] >= b["G=1"]["prompt_floor"] > 0
    assert b["chunk-32"]["prompt"] > 1.5 * b["chunk-32"]["one_pass_each"]
    assert b["chunk-32"]["reload_factor"] > 1.5 * b["G=1"]["reload_factor"]


@pytest.mark.engine
def test_prometheus_counters_with_enable_metrics(model_path, tmp_path):
    """With SGLang's --enable-metrics, expert accounting is exported as Prometheus counters on /metrics, and they
    agree with the trace (a G > 1 cohort's tokens counted once)."""
    import re

    import requests

    from sgl_layered.analysis import expert_traffic
    from server import Server

    trace = tmp_path / "trace.jsonl"
    args = ["--enable-layered-prefill", "--layered-prefill-groups", str(TINY.num_layers),
            "--layered-prefill-expert-accounting", "--enable-metrics", "--layered-prefill-trace", str(trace)]
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

    t = expert_traffic.totals(read(trace))  # the warm-up request and ours
    assert t["prefill_tokens"] >= 100
    assert value("sglang_layered_prefill_tokens_total") == t["prefill_tokens"]
    assert value("sglang_layered_expert_prefill_bytes_total") == t["prefill_bytes"] > 0
    assert value("sglang_layered_expert_loaded_bytes_total") == t["loaded_bytes"] >= t["prefill_bytes"]


@pytest.mark.engine
def test_accounting_agrees_with_sglang_expert_distribution_recorder(model_path, tmp_path, monkeypatch):
    """SGLang's own recorder (per_pass: a layers x experts token count per forward pass) and our trace see the same
    forwards and the same experts: per pass and layer, the experts with a count equal our distinct experts, exactly
    (both read the same top-k ids from select_experts; cohort-only passes are forward passes for both)."""
    import glob

    from workload import prompts, run_staggered

    monkeypatch.setenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", str(tmp_path))
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), enable_layered_prefill=True,
                                layered_prefill_groups=3, layered_prefill_trace=str(trace),
                                layered_prefill_expert_accounting=True, expert_distribution_recorder_mode="per_pass",
                                **cpu.engine_kwargs())
    try:
        engine.start_expert_distribution_record()
        run_staggered(engine, prompts()[:8], max_new_tokens=6)
        engine.stop_expert_distribution_record()
        engine.dump_expert_distribution_record()
    finally:
        engine.shutdown()
    (dump,) = glob.glob(str(tmp_path / "expert_distribution_recorder_*.pt"))
    passes = torch.load(dump, weights_only=False)["records"]
    rows = read(trace)
    assert len(passes) == len(rows) and any(r["mode"] == "layered" and not r["decode_rows"] for r in rows)
    for record, row in zip(passes, rows):
        theirs = (record["global_physical_count"] > 0).sum(dim=1).tolist()
        ours = [0] * len(theirs)
        for layer, _, _, distinct, *_ in row["experts"]["layers"]:
            ours[layer] += distinct
        assert ours == theirs, (row["iter"], ours, theirs)
