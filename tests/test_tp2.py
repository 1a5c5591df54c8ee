"""TP=2 on CPU: both scheduler ranks run layered prefill and give TP=1 stock SGLang's tokens."""

import os

import pytest

import sgl_layered
from sgl_layered import cpu
from workload import prompts, run_staggered


@pytest.mark.engine
def test_tp2_layered_matches_tp1_stock(model_path, stock_reference, monkeypatch):
    monkeypatch.setenv("SGLANG_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), tp_size=2, enable_layered_prefill=True,
                                layered_prefill_groups=3, **cpu.engine_kwargs())
    try:
        infos = engine._scheduler_init_result.scheduler_infos
        outputs = run_staggered(engine, prompts())
    finally:
        engine.shutdown()
    assert len(infos) == 2 and all(i["sgl_layered"]["layered"] for i in infos)
    assert outputs == stock_reference("tiny-qwen3-moe")["outputs"]
