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
from workload import MAX_NEW_TOKENS, drain, prompts, run_staggered

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
    """Issue 4 (f) in the engine: with the H200 profile, the adaptive policy runs a 1499-token prompt that arrives
    while two short requests decode as 512-token chunks through every layer (SGLang's chunked admission, KV per
    chunk): on this dense model the roofline model predicts chunks add 20-60% less time than layer groups at
    every decode state this workload reaches (1-2 rows, contexts under 400). Tokens equal SGLang's unchunked
    prefill; nothing leaks."""
    import asyncio

    monkeypatch.setenv("SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE", "1")
    trace = tmp_path / "trace.jsonl"
    ids = prompts()
    short, long_ = (3, 4), 17  # 31 and 64 tokens decoding; 1499 tokens arriving
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3"), enable_layered_prefill=True,
                                layered_prefill_policy="adaptive", layered_prefill_cost_profile="H200-SXM",
                                layered_prefill_trace=str(trace), **cpu.engine_kwargs())

    async def gen(i, n, delay=0.0):
        await asyncio.sleep(delay)
        out = await engine.async_generate(input_ids=ids[i], sampling_params={
            "max_new_tokens": n, "temperature": 0.0, "ignore_eos": True})
        return out["output_ids"]

    async def all_():  # the decoders run 300 tokens, far longer than the long prompt's admission takes
        return await asyncio.gather(gen(short[0], 300), gen(short[1], 300), gen(long_, MAX_NEW_TOKENS, 0.5))

    try:
        outputs = engine.loop.run_until_complete(all_())
        drain(engine)
        engine.flush_cache()
        state = engine.get_server_info()["internal_states"][0]["sgl_layered"]
    finally:
        engine.shutdown()
    reference = stock_reference("tiny-qwen3")["outputs"]
    for i, out in zip((*short, long_), outputs):
        assert out[:MAX_NEW_TOKENS] == reference[i], f"prompt {i} differs from SGLang's unchunked prefill"
    layers = get_preset("tiny-qwen3").num_layers
    rows = read(trace)
    pieces = [(r["decode_rows"], p) for r in rows for p in r["prefill"]]
    totals = {}
    for _, p in pieces:
        for rid, n in zip(p["rids"], p["req_tokens"]):
            totals[rid] = totals.get(rid, 0) + n
    long_rid = next(rid for rid, n in totals.items() if n == len(ids[long_]))
    chunks = [(rows_, p) for rows_, p in pieces if long_rid in p["rids"]]
    assert len(chunks) >= 3, chunks  # 512 + 512 + 475
    assert all(list(p["layers"]) == [0, layers] and p["tokens"] <= 512 and rows_ >= 1 for rows_, p in chunks)
    assert state["kv_available"] + state["kv_evictable"] == state["kv_total"] and state["cohorts_in_flight"] == 0

