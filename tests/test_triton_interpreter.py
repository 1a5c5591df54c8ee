"""The fused pass through SGLang's GPU kernels, on CPU under Triton's interpreter (TRITON_INTERPRET=1, fp32): with
SGLang's Triton attention backend and its Triton fused MoE, layered prefill gives the same greedy tokens as
SGLang's unchunked prefill, prefills overlapping decodes; and in every iteration where a cohort's prompt rows run
beside the decode rows, each MoE layer of the cohort's group makes exactly one fused-MoE call over both.

Attention: a second Triton backend instance for the prompt rows, split by RowSplitAttention, as on a GPU.
MoE: SGLang runs its per-expert torch loop on CPU; tests/triton_moe/ switches its scheduler processes to the
Triton MoE runner (with a torch stand-in for the CUDA-only routing alignment, and one pinned block-size config)
and records every MoE layer call: which path ran, the layer, the rows, the fused-MoE calls and kernel launches.
"""

import json
import os

import pytest

import sgl_layered
from sgl_layered import cpu
from trace_checks import read
from workload import prompts, run_staggered

PATCH_DIR = os.path.join(os.path.dirname(__file__), "triton_moe")
# The interpreter runs every kernel instance in Python: few, short prompts and few new tokens.
LENGTHS = [1, 19, 45]
NEW_TOKENS = 4


def expected_moe_calls(trace_rows) -> list:
    """(layer, rows) of every MoE layer call, in order, as the trace says the forwards ran: each layer gets one call
    over the iteration's decode rows plus the prompt rows of the piece whose layer range holds it (an iteration
    without decode rows runs only its pieces' layers)."""
    calls = []
    for row in sorted(trace_rows, key=lambda r: r["iter"]):
        for layer in range(row["num_layers"]):
            prompt = sum(p["tokens"] for p in row["prefill"] if p["layers"][0] <= layer < p["layers"][1])
            rows = row["decode_rows"] + prompt
            if rows:
                calls.append((layer, rows))
    return calls


def check_triton_moe(records, trace_rows) -> None:
    native = [r for r in records if r["path"] != "triton"]
    assert not native, f"SGLang's native CPU MoE ran: {native[:3]}"
    assert len({r["pid"] for r in records}) == 1, "expected the MoE calls of one scheduler process"
    for r in records:
        # One fused-MoE call per MoE layer call: routing aligned once, then the up and down Triton kernels.
        assert (r["fused_calls"], r["aligns"], r["kernels"]) == (1, 1, 2), r
    assert [(r["layer"], r["rows"]) for r in records] == expected_moe_calls(trace_rows)


@pytest.mark.engine
def test_layered_matches_unchunked_with_triton_attention_and_moe_interpreted(model_path, monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [PATCH_DIR, os.environ.get("PYTHONPATH")])))
    ids = prompts(lengths=LENGTHS)
    outputs, traces = {}, {}
    for mode in ("stock", "layered"):
        record, trace = tmp_path / f"{mode}-moe.jsonl", tmp_path / f"{mode}-trace.jsonl"
        monkeypatch.setenv("TRITON_MOE_RECORD", str(record))  # read by the engine's processes at start-up
        kw = dict(chunked_prefill_size=-1) if mode == "stock" else dict(
            enable_layered_prefill=True, layered_prefill_groups=3)
        engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), layered_prefill_trace=str(trace), **kw,
                                    **cpu.engine_kwargs(attention_backend="triton"))
        try:
            assert engine.get_server_info()["attention_backend"] == "triton"
            outputs[mode] = run_staggered(engine, ids, max_new_tokens=NEW_TOKENS)
        finally:
            engine.shutdown()
        traces[mode] = read(trace)
        assert record.exists(), "no MoE call recorded: tests/triton_moe/sitecustomize.py did not run in the scheduler"
        check_triton_moe([json.loads(line) for line in record.read_text().splitlines()], traces[mode])
    assert outputs["layered"] == outputs["stock"]

    # The layered run did fuse: a cohort's later layer groups ran beside decode rows, in the same MoE calls.
    fused = [p for row in traces["layered"] if row["mode"] == "layered" and row["decode_rows"] > 0
             for p in row["prefill"]]
    assert any(p["layers"][0] > 0 for p in fused), "no cohort resumed a later layer group beside decode rows"
