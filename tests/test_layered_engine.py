"""End to end through the Engine API: layered prefill gives stock SGLang's exact greedy tokens (fp32),
with prefills overlapping running decodes, and the trace proves the schedule."""

import pytest

import sgl_layered
from sgl_layered import cpu
from sgl_layered.core.partition import paper_group_count
from sgl_layered.models import get_preset
from trace_checks import check_layered_schedule, read
from workload import EAGER_JOIN, PREFIX_SHARING, drain, prompts, run_staggered

MODELS = ["tiny-qwen3-moe", "tiny-mixtral"]


# Every group setting on Qwen3-MoE; Mixtral (same fused pass, other layer class) on two of them, to keep CI short.
GROUP_CASES = [("tiny-qwen3-moe", g) for g in ("2", "3", "N", "auto")] + [("tiny-mixtral", g) for g in ("3", "auto")]


@pytest.mark.engine
@pytest.mark.parametrize("model,groups", GROUP_CASES)
def test_layered_matches_stock(model, groups, model_path, stock_reference, tmp_path):
    num_layers = get_preset(model).num_layers
    setting = str(num_layers) if groups == "N" else groups
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path(model), enable_layered_prefill=True,
                                layered_prefill_groups=setting, layered_prefill_trace=str(trace),
                                **cpu.engine_kwargs())
    try:
        responses = run_staggered(engine, prompts(), full=True)
    finally:
        engine.shutdown()
    outputs = [r["output_ids"] for r in responses]
    reference = stock_reference(model)["outputs"]
    mismatched = [i for i, (a, b) in enumerate(zip(outputs, reference)) if a != b]
    assert not mismatched, f"prompts {mismatched} differ from stock SGLang"

    if setting == "auto":
        def expected(tokens):
            return paper_group_count(tokens, num_layers, 512)
    else:
        def expected(tokens):
            return int(setting)
    rows = read(trace)
    fused = check_layered_schedule(rows, num_layers, expected)
    assert fused >= 5, "too few layered passes overlapped running decodes to test the fused pass"

    # Prefix-cache hits shorten the layered part: only the uncached tokens run through the layer groups.
    for index, (base, extra) in PREFIX_SHARING.items():
        meta = responses[index]["meta_info"]
        assert meta["cached_tokens"] >= len(prompts()[base]) - 1, meta
        rid = meta["id"]
        pieces = [p for r in rows for p in r["prefill"] if rid in p["rids"]]
        assert pieces and all(p["tokens"] < len(prompts()[index]) for p in pieces if p["rids"] == [rid])


def _pipelining_run(engine, a, b, cs, trace=None):
    """Requests cs decode; A arrives; B is sent once the trace shows A's first layered pass (so it lands while
    A is in its later groups); without a trace, B is sent 50 ms after A. Returns the output ids."""
    import asyncio
    import json
    import os

    async def gen(ids, n):
        out = await engine.async_generate(input_ids=ids, sampling_params={
            "max_new_tokens": n, "temperature": 0.0, "ignore_eos": True})
        return out["output_ids"]

    async def a_then_b():
        await asyncio.sleep(0.4)
        task_a = asyncio.ensure_future(gen(a, 8))
        if trace is None:
            await asyncio.sleep(0.05)
        else:
            for _ in range(2000):
                await asyncio.sleep(0.002)
                if os.path.exists(trace) and any(p["tokens"] == len(a) for line in open(trace) if line.strip()
                                                 for p in json.loads(line)["prefill"]):
                    break
        return await asyncio.gather(task_a, gen(b, 8))

    async def all_():
        return await asyncio.gather(a_then_b(), *(gen(c, 150) for c in cs))

    (out_a, out_b), *out_cs = engine.loop.run_until_complete(all_())
    drain(engine)
    return [out_a, out_b, *out_cs]


@pytest.mark.engine
@pytest.mark.parametrize("model", MODELS[:1])  # Mixtral's fused pass is covered above; one model keeps CI short
def test_adaptive_policy_pipelines_cohorts_exactly(model, model_path, tmp_path):
    """Our policy runs a second cohort's first group while the first cohort runs a later group, in the same
    decode forward, and still gives stock SGLang's tokens. With 280 tokens per group the 5-layer budget is 1400
    token-layers: A (1200 tokens) gets 5 one-layer groups and leaves room for B (60 tokens) beside it."""
    import random

    rng = random.Random(5)
    a, b, *cs = ([rng.randrange(0, 2045) for _ in range(n)] for n in (1200, 60, 10, 11, 12, 13))
    trace = str(tmp_path / "t")
    outputs = {}
    for mode in ("stock", "adaptive"):
        kw = {} if mode == "stock" else dict(
            enable_layered_prefill=True, layered_prefill_policy="adaptive", layered_prefill_group_tokens=280,
            layered_prefill_trace=trace, layered_prefill_switches=EAGER_JOIN)
        engine = sgl_layered.Engine(model_path=model_path(model), **kw, **cpu.engine_kwargs())
        try:
            outputs[mode] = _pipelining_run(engine, a, b, cs, trace if mode == "adaptive" else None)
        finally:
            engine.shutdown()
    assert outputs["adaptive"] == outputs["stock"]
    rows = read(trace)
    check_layered_schedule(rows, get_preset(model).num_layers, None, count_check=False)
    pipelined = [r for r in rows if len(r["prefill"]) > 1]
    assert pipelined, "the second cohort never ran beside the first"
    assert all(r["decode_rows"] >= 1 for r in pipelined)  # fused into the decode forward


@pytest.mark.engine
def test_plugin_off_is_stock(stock_reference):
    """With layered prefill and the trace off, the plugin installs nothing in SGLang's scheduler."""
    info = stock_reference("tiny-qwen3-moe")["scheduler_info"]
    assert "sgl_layered" not in info


@pytest.mark.engine
def test_trace_records_stock_chunked_prefill(model_path, stock_reference, tmp_path):
    """The trace also works with layered prefill off, here in SGLang's chunked mode (64-token chunks)."""
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), layered_prefill_trace=str(trace),
                                **cpu.engine_kwargs(chunked_prefill_size=64))
    try:
        info = engine._scheduler_init_result.scheduler_infos[0]["sgl_layered"]
        outputs = run_staggered(engine, prompts())
    finally:
        engine.shutdown()
    assert info["layered"] is False
    assert outputs == stock_reference("tiny-qwen3-moe")["outputs"]  # SGLang's chunking is exact too
    rows = read(trace)
    chunks = [p for r in rows for p in r["prefill"]]
    assert chunks and all(p["tokens"] <= 64 and p["layers"] == [0, 5] for p in chunks)
    assert any(r["mode"] == "decode" and r["decode_rows"] > 0 for r in rows)
    assert len({rid for r in rows for rid in r["finished"]}) >= len(prompts())


def test_register_is_idempotent():
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sgl_layered.adapter import plugin

    plugin.register()
    before = {t: len(v) for t, v in HookRegistry._hooks.items()}
    plugin.register()
    assert {t: len(v) for t, v in HookRegistry._hooks.items()} == before


@pytest.mark.engine
def test_chunk_by_layer_hybrid_matches_stock(model_path, stock_reference, tmp_path, monkeypatch):
    """--layered-prefill-chunk-tokens 256: prompts up to 1499 tokens are admitted 256 tokens at a time (SGLang's
    chunked admission: KV per chunk) and every chunk runs as a layered cohort over 2 groups. Same tokens as
    stock unchunked prefill; no chunk ever exceeds 256 tokens; nothing leaks."""
    monkeypatch.setenv("SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE", "1")
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), enable_layered_prefill=True,
                                layered_prefill_groups=2, layered_prefill_chunk_tokens=256,
                                layered_prefill_trace=str(trace), **cpu.engine_kwargs())
    try:
        outputs = run_staggered(engine, prompts())
        engine.flush_cache()
        state = engine.get_server_info()["internal_states"][0]["sgl_layered"]
    finally:
        engine.shutdown()
    reference = stock_reference("tiny-qwen3-moe")["outputs"]
    mismatched = [i for i, (a, b) in enumerate(zip(outputs, reference)) if a != b]
    assert not mismatched, f"prompts {mismatched} differ from stock SGLang"
    rows = read(trace)
    pieces = [p for r in rows for p in r["prefill"]]
    assert pieces and all(p["tokens"] <= 256 for p in pieces)
    cohorts_of = {}
    for p in pieces:
        for rid in p["rids"]:
            cohorts_of.setdefault(rid, set()).add(p["cohort"])
    assert max(len(c) for c in cohorts_of.values()) >= 1499 // 256, "the longest prompt was not chunked"
    for cohort in {p["cohort"] for p in pieces}:  # every chunk: both layer groups, in order
        ranges = [tuple(p["layers"]) for p in pieces if p["cohort"] == cohort]
        assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(5)), ranges
    assert state["kv_available"] + state["kv_evictable"] == state["kv_total"] and state["cohorts_in_flight"] == 0
