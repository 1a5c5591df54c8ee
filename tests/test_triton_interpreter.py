"""The fused pass through SGLang's Triton attention backend, on CPU under Triton's interpreter
(TRITON_INTERPRET=1, fp32): layered prefill gives the same greedy tokens as SGLang's unchunked prefill with
the same backend, prefills overlapping decodes. This is the GPU attention code path (a second Triton backend
instance for the prompt rows, split by RowSplitAttention), run by the interpreter.

The MoE still runs SGLang's native CPU path here: its Triton fused MoE cannot run on CPU, because the
unquantized MoE dispatches by platform (forward_cpu on CPU) and the Triton path's routing alignment
(`moe_align_block_size`) is a JIT-compiled CUDA kernel imported only on CUDA/HIP/XPU/MUSA builds."""

import pytest

import sgl_layered
from sgl_layered import cpu
from workload import prompts, run_staggered

# The interpreter runs every kernel instance in Python: few, short prompts and few new tokens keep this ~1 min.
LENGTHS = [1, 31, 130, 300]


@pytest.mark.engine
def test_layered_matches_unchunked_with_triton_attention_interpreted(model_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ids = prompts(lengths=LENGTHS)
    outputs = {}
    for mode in ("stock", "layered"):
        kw = dict(chunked_prefill_size=-1) if mode == "stock" else dict(
            enable_layered_prefill=True, layered_prefill_groups=3)
        engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), **kw,
                                    **cpu.engine_kwargs(attention_backend="triton"))
        try:
            assert engine.get_server_info()["attention_backend"] == "triton"
            outputs[mode] = run_staggered(engine, ids, max_new_tokens=6)
        finally:
            engine.shutdown()
    assert outputs["layered"] == outputs["stock"]
