"""Shared fixtures: embedded models, CPU engine settings, and stock-SGLang reference outputs.

Every SGLang start costs ~15 s on the CI machine, so reference outputs are computed once per session.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from sgl_layered import cpu  # noqa: E402

GPU_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu")


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true",
                     help="run only the GPU tests in tests/gpu (CUDA and SGLang's GPU install); without it only the "
                          "CPU suite runs, on SGLang's CPU engine even where a GPU is present")


def pytest_configure(config):
    # The CPU suite always runs SGLang's CPU engine, GPU or not; the GPU run keeps the machine's own settings.
    # The two never share a process, so neither can change the other's environment.
    if not config.getoption("--gpu"):
        cpu.apply_env()


def pytest_ignore_collect(collection_path, config):
    path = str(collection_path)
    in_gpu = path == GPU_DIR or path.startswith(GPU_DIR + os.sep)
    if config.getoption("--gpu"):
        return None if in_gpu or collection_path.is_dir() else True
    return True if in_gpu else None

_REFERENCE = {}

# Stock SGLang 0.5.23 cannot run Qwen2-MoE on CPU (its shared-expert gate is a Triton kernel), nor DeepSeek-V2/V3
# (torch_native gets an MHA prefill path it cannot serve). Their references load our plugin with layered
# prefill off (the trace on, to a scratch file): SGLang's own unchunked schedule plus only the CPU-engine fix
# (hooks with only_on_cpu_engine: the gate stand-in, the absorbed MLA method for torch_native).
_NEEDS_CPU_FIX = {"tiny-qwen2-moe", "tiny-deepseek-v2", "tiny-deepseek-v3"}


@pytest.fixture(scope="session")
def model_path():
    from sgl_layered.models import build

    return lambda name: str(build(name))


@pytest.fixture(scope="session")
def stock_reference(model_path):
    """Greedy outputs of stock SGLang (chunked prefill disabled, plugin installed but off), per model."""
    import sgl_layered
    from workload import LOGPROB_PROMPT, greedy, prompts, run_staggered

    def get(name):
        if name not in _REFERENCE:
            extra = {}
            if name in _NEEDS_CPU_FIX:
                import tempfile

                extra["layered_prefill_trace"] = tempfile.mkstemp(suffix=".jsonl")[1]
            engine = sgl_layered.Engine(model_path=model_path(name), **extra,
                                        **cpu.engine_kwargs(chunked_prefill_size=-1))
            try:
                info = engine._scheduler_init_result.scheduler_infos[0]
                outputs = run_staggered(engine, prompts())
                completion = engine.generate(prompt="the layer of the expert", sampling_params={
                    "max_new_tokens": 12, "temperature": 0.0})["text"]
                logprobs = engine.generate(input_ids=LOGPROB_PROMPT, sampling_params=greedy(8), return_logprob=True,
                                           logprob_start_len=0, top_logprobs_num=2)["meta_info"]
            finally:
                engine.shutdown()
            _REFERENCE[name] = {"outputs": outputs, "completion": completion, "logprobs": logprobs,
                                "scheduler_info": info}
        return _REFERENCE[name]

    return get
