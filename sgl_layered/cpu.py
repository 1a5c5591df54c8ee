"""Settings that make SGLang 0.5.23 serve on a CPU-only machine (our tests, demo and benchmarks use them).

SGLang's CPU engine needs SGLANG_USE_CPU_ENGINE=1 and device="cpu"; attention runs in torch_native; there
is no CUDA graph; and the KV pool must be sized explicitly (the default would grab most of the RAM).
fp32 keeps greedy outputs bit-stable enough to compare modes token for token.
"""

from __future__ import annotations

import os

CPU_ENV = {
    "SGLANG_USE_CPU_ENGINE": "1",
    # The CPU environment's torch wheel ships libnccl, so SGLang would build an NCCL communicator for TP>1
    # and fail on the CPU device. Pointing SGLang's NCCL override at no library takes its documented
    # "NCCL missing (non-GPU environment)" path: TP then all-reduces through torch.distributed (gloo).
    "SGLANG_NCCL_SO_PATH": "/nonexistent/sgl-layered-cpu-has-no-nccl.so",
}


def engine_kwargs(max_total_tokens: int = 16384, dtype: str = "float32", **overrides) -> dict:
    kw = dict(
        device="cpu",
        attention_backend="torch_native",
        dtype=dtype,
        max_total_tokens=max_total_tokens,
        disable_cuda_graph=True,
        mem_fraction_static=0.3,
        log_level="error",
    )
    kw.update(overrides)
    return kw


def server_args(max_total_tokens: int = 16384, dtype: str = "float32") -> list:
    """The same settings as `python -m sglang.launch_server` flags."""
    return ["--device", "cpu", "--attention-backend", "torch_native", "--dtype", dtype,
            "--max-total-tokens", str(max_total_tokens), "--disable-cuda-graph", "--mem-fraction-static", "0.3"]


def apply_env() -> None:
    os.environ.update(CPU_ENV)


# -- this machine: the CPU settings only where there is no CUDA device ---------------------------------------------
def have_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def machine_env() -> dict:
    """Environment for SGLang processes on this machine (the CPU engine's, or nothing on a GPU machine)."""
    return {} if have_cuda() else dict(CPU_ENV)


def env_for_server_args(args) -> dict:
    """Environment for a launch_server with these flags: the CPU engine's when they ask for `--device cpu` (so a
    CPU server starts on a CUDA machine too), else this machine's."""
    args = list(args)
    asks_cpu = any(a == "--device" and i + 1 < len(args) and args[i + 1] == "cpu" for i, a in enumerate(args)) \
        or "--device=cpu" in args
    return dict(CPU_ENV) if asks_cpu else machine_env()


def machine_engine_kwargs(**overrides) -> dict:
    """Engine settings for this machine: the CPU engine's (above) without CUDA, SGLang's defaults with it."""
    if not have_cuda():
        return engine_kwargs(**overrides)
    return {"log_level": "error", **overrides}


def machine_server_args(max_total_tokens: int = 16384, dtype: str = "float32") -> list:
    """launch_server flags for this machine (the CPU ones without CUDA, none with it)."""
    return [] if have_cuda() else server_args(max_total_tokens, dtype)
