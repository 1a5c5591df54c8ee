"""On a GPU: layered prefill gives the same greedy tokens as SGLang's unchunked prefill with the FlashInfer and
Triton attention backends and Triton fused MoE (CUDA graphs on: decode-only iterations replay SGLang's decode
graph, layered ones run eager), prefills overlapping running decodes. Skipped without CUDA (see conftest.py);
run: pytest tests/gpu. Not yet run on a GPU by us (no GPU was lent to the sessions that wrote it)."""

import pytest

import sgl_layered
from workload import prompts, run_staggered

MODELS = ["tiny-qwen3-moe", "tiny-mixtral", "tiny-qwen2-moe"]


def _engine(model_path, backend, **kw):
    # fp16: FlashInfer has no fp32 kernels; the tiny models' logits are far apart enough for exact argmax here.
    return sgl_layered.Engine(model_path=model_path, attention_backend=backend, dtype="float16",
                              mem_fraction_static=0.5, max_total_tokens=65536, log_level="error", **kw)


@pytest.mark.parametrize("backend", ["flashinfer", "triton"])
@pytest.mark.parametrize("model", MODELS)
def test_layered_matches_unchunked_on_gpu(model, backend, model_path, tmp_path):
    outputs = {}
    for mode in ("stock", "layered"):
        kw = dict(chunked_prefill_size=-1) if mode == "stock" else dict(
            enable_layered_prefill=True, layered_prefill_groups=3, layered_prefill_trace=str(tmp_path / "t.jsonl"))
        engine = _engine(model_path(model), backend, **kw)
        try:
            outputs[mode] = run_staggered(engine, prompts())
            if mode == "layered":
                info = engine.get_server_info()
        finally:
            engine.shutdown()
    mismatched = [i for i, (a, b) in enumerate(zip(outputs["layered"], outputs["stock"])) if a != b]
    assert not mismatched, f"{model} / {backend}: prompts {mismatched} differ from unchunked prefill"
    assert info["sgl_layered"]["layered"] is True
