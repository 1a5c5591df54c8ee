"""On a GPU: layered prefill against SGLang's unchunked prefill, prefills overlapping running decodes, with the
attention backend SGLang picks by itself (fa3 on Hopper), FlashInfer and Triton, and Triton fused MoE.

Run from the repository root with `pytest --gpu` (never collected by plain `pytest`). Not yet run on a GPU by
us: no GPU was lent to the sessions that wrote it. What it asserts, and why that can pass on a GPU:

* exact tokens under SGLang's `--enable-deterministic-inference` (batch-invariant matmuls and attention; it
  supports fa3, FlashInfer and Triton): a row's result then does not depend on which other rows share its
  batch, which is the only thing layered prefill changes;
* without it (what users run by default, bf16), GPU kernels are not batch-invariant, so tokens may differ after
  a near-tie: greedy tokens agree up to the first position where stock's top-2 logprob margin is below
  MARGIN_NATS, and the chosen tokens' logprobs agree within LOGPROB_TOL_NATS until then.

The models are the `gpu-*` presets (head dims 64 and 128, which every FlashInfer and fa3 build serves).
"""

import pytest

import sgl_layered
from workload import prompts, run_staggered

MODELS = ["gpu-qwen3-moe", "gpu-mixtral", "gpu-qwen2-moe"]
BACKENDS = [None, "flashinfer", "triton"]  # None: SGLang's own choice (fa3 on Hopper, FlashInfer elsewhere)
LOGPROB_TOL_NATS = 0.05  # bf16 carries ~3 significant digits; logits of these models are O(1-10)
MARGIN_NATS = 0.05  # a divergence is acceptable only where stock itself nearly tied


def _engine(model_path, backend, deterministic, **kw):
    extra = {"attention_backend": backend} if backend else {}
    return sgl_layered.Engine(model_path=model_path, dtype="bfloat16", mem_fraction_static=0.5,
                              max_total_tokens=65536, log_level="error",
                              enable_deterministic_inference=deterministic, **extra, **kw)


def _run_both(model_path, backend, deterministic, tmp_path, **request_kwargs):
    outputs, infos = {}, {}
    for mode in ("stock", "layered"):
        kw = dict(chunked_prefill_size=-1) if mode == "stock" else dict(
            enable_layered_prefill=True, layered_prefill_groups=3, layered_prefill_trace=str(tmp_path / "t.jsonl"))
        engine = _engine(model_path, backend, deterministic, **kw)
        try:
            outputs[mode] = run_staggered(engine, prompts(), full=True, **request_kwargs)
            infos[mode] = engine.get_server_info()
        finally:
            engine.shutdown()
    assert infos["layered"]["sgl_layered"]["layered"] is True
    assert infos["layered"]["attention_backend"] == infos["stock"]["attention_backend"]
    return outputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_exact_tokens_with_deterministic_inference(model, backend, model_path, tmp_path):
    outputs = _run_both(model_path(model), backend, True, tmp_path)
    got = [o["output_ids"] for o in outputs["layered"]]
    want = [o["output_ids"] for o in outputs["stock"]]
    mismatched = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not mismatched, f"{model} / {backend or 'default'}: prompts {mismatched} differ from unchunked prefill"


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_agreement_within_logprob_tolerance(backend, model_path, tmp_path):
    outputs = _run_both(model_path("gpu-qwen3-moe"), backend, False, tmp_path, return_logprob=True,
                        top_logprobs_num=2)
    for i, (ours, stock) in enumerate(zip(outputs["layered"], outputs["stock"])):
        mine = ours["meta_info"]["output_token_logprobs"]
        theirs = stock["meta_info"]["output_token_logprobs"]
        tops = stock["meta_info"]["output_top_logprobs"]
        for pos, (a, b) in enumerate(zip(mine, theirs)):
            if a[1] != b[1]:  # (logprob, token id, text): a different token is fine only after a near-tie
                margin = tops[pos][0][0] - tops[pos][1][0]
                assert margin < MARGIN_NATS, f"prompt {i} token {pos}: diverged with stock's margin {margin:.3f}"
                break
            assert abs(a[0] - b[0]) <= LOGPROB_TOL_NATS, f"prompt {i} token {pos}: logprob {a[0]} vs {b[0]}"
