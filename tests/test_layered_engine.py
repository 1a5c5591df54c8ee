"""End to end through the Engine API: layered prefill gives stock SGLang's exact greedy tokens (fp32),
with prefills overlapping running decodes, and the trace proves the schedule."""

import pytest

import sgl_layered
from sgl_layered import cpu
from sgl_layered.core.partition import paper_group_count
from sgl_layered.models import get_preset
from trace_checks import check_layered_schedule, read
from workload import prompts, run_staggered

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
        outputs = run_staggered(engine, prompts())
    finally:
        engine.shutdown()
    reference = stock_reference(model)["outputs"]
    mismatched = [i for i, (a, b) in enumerate(zip(outputs, reference)) if a != b]
    assert not mismatched, f"prompts {mismatched} differ from stock SGLang"

    if setting == "auto":
        def expected(tokens):
            return paper_group_count(tokens, num_layers, 512)
    else:
        def expected(tokens):
            return int(setting)
    fused = check_layered_schedule(read(trace), num_layers, expected)
    assert fused >= 5, "too few layered passes overlapped running decodes to test the fused pass"


@pytest.mark.engine
def test_plugin_off_is_stock(stock_reference):
    """With layered prefill and the trace off, the plugin installs nothing in SGLang's scheduler."""
    info = stock_reference("tiny-qwen3-moe")["scheduler_info"]
    assert "sgl_layered" not in info
