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
from workload import MAX_NEW_TOKENS, prompts, run_staggered

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


@pytest.mark.engine
def test_chosen_chunked_execution_matches_stock(model_path, stock_reference, tmp_path, monkeypatch):
    """Issue 4 (f) in the engine: on a dense model with the H100 profile the adaptive policy runs long prompts as
    512-token chunks through every layer (SGLang's chunked admission, KV per chunk) and short ones whole; tokens
    equal SGLang's unchunked prefill and nothing leaks."""
    monkeypatch.setenv("SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE", "1")
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3"), enable_layered_prefill=True,
                                layered_prefill_policy="adaptive", layered_prefill_cost_profile="H100-SXM",
                                layered_prefill_trace=str(trace), **cpu.engine_kwargs())
    try:
        # Long outputs keep earlier requests decoding when the long prompts arrive (with nothing decoding the
        # choice is layered: no decode latency to protect). The reference holds the first MAX_NEW_TOKENS.
        outputs = run_staggered(engine, prompts(), max_new_tokens=4 * MAX_NEW_TOKENS)
        engine.flush_cache()
        state = engine.get_server_info()["internal_states"][0]["sgl_layered"]
    finally:
        engine.shutdown()
    reference = stock_reference("tiny-qwen3")["outputs"]
    mismatched = [i for i, (a, b) in enumerate(zip(outputs, reference)) if a[:MAX_NEW_TOKENS] != b]
    assert not mismatched, f"prompts {mismatched} differ from SGLang's unchunked prefill"
    pieces = [p for r in read(trace) for p in r["prefill"]]
    layers = get_preset("tiny-qwen3").num_layers
    chunked = {}  # rid -> full-depth pieces of a prompt split into several cohorts
    for p in pieces:
        if list(p["layers"]) == [0, layers]:
            for rid, tokens in zip(p["rids"], p["req_tokens"]):
                chunked.setdefault(rid, []).append(tokens)
    split = {rid: sizes for rid, sizes in chunked.items() if len(sizes) > 1}
    assert split, "no prompt ran as chunks"
    assert all(max(sizes) <= 512 for sizes in split.values())
    assert max(sum(sizes) for sizes in split.values()) >= 1300  # the longest prompts, whole
    assert state["kv_available"] + state["kv_evictable"] == state["kv_total"] and state["cohorts_in_flight"] == 0
