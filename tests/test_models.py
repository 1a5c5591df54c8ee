"""Every supported architecture beyond the two core ones: Qwen2-MoE (shared experts, a Triton gate we replace on
CPU), DeepSeek-V2 and V3 (MLA attention, a dense first layer, shared experts; V3 with a q LoRA and its noaux_tc
router; SGLang's MLA method dispatch fixed for torch_native on CPU) and the dense Llama and Qwen3. fp32 greedy
tokens equal SGLang's unchunked prefill, with prefills overlapping running decodes, and the trace shows the
layered schedule."""

import pytest

import sgl_layered
from sgl_layered import cpu
from sgl_layered.models import get_preset
from trace_checks import check_layered_schedule, read
from workload import prompts, run_staggered

MODELS = ["tiny-qwen2-moe", "tiny-deepseek-v2", "tiny-deepseek-v3", "tiny-llama", "tiny-qwen3"]


@pytest.mark.engine
@pytest.mark.parametrize("model", MODELS)
def test_layered_matches_stock(model, model_path, stock_reference, tmp_path):
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path(model), enable_layered_prefill=True, layered_prefill_groups=3,
                                layered_prefill_trace=str(trace), **cpu.engine_kwargs())
    try:
        outputs = run_staggered(engine, prompts())
    finally:
        engine.shutdown()
    reference = stock_reference(model)["outputs"]
    mismatched = [i for i, (a, b) in enumerate(zip(outputs, reference)) if a != b]
    assert not mismatched, f"prompts {mismatched} differ from SGLang's unchunked prefill"
    assert check_layered_schedule(read(trace), get_preset(model).num_layers, lambda tokens: 3) >= 3
