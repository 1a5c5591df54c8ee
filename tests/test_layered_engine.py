"""End to end through the Engine API: layered prefill gives stock SGLang's exact greedy tokens (fp32),
with prefills overlapping running decodes, and the trace proves the schedule."""

import pytest

import sgl_layered
from sgl_layered import cpu
from sgl_layered.core.partition import paper_group_count
from sgl_layered.models import get_preset
from trace_checks import check_layered_schedule, read
from workload import PREFIX_SHARING, prompts, run_staggered

MODELS = ["tiny-qwen3-moe", "tiny-mixtral"]


@pytest.mark.engine
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("groups", ["2", "3", "N", "auto"])
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
