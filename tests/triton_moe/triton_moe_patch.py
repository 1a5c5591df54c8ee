"""Test-only: run SGLang 0.5.23's Triton fused MoE on a CPU-only machine (under TRITON_INTERPRET=1), and record
every MoE layer call, so a test can prove which MoE path ran and with how many rows.

Installed in SGLang's scheduler processes by this folder's sitecustomize.py, when TRITON_MOE_RECORD names a
file. Patches are applied right after the SGLang module that holds each target has been imported (an import hook):
nothing here imports SGLang itself, and a process that never imports those modules is left alone.

What keeps SGLang off its Triton MoE on CPU, and what each patch does about it:
  * The unquantized MoE method (`UnquantizedFusedMoEMethod`, a `BaseFusedOp`) resolves its forward once, by
    platform: on a CPU without AMX it runs `forward_native`, SGLang's per-expert torch loop. Its `forward_cuda`
    runs the MoE runner the layer already builds on CPU (backend TRITON, whose fused function calls
    `fused_experts`). Patched: the method's forward resolves to `forward_cuda`.
  * `moe_align_block_size` sorts the routed (token, expert) slots by expert into blocks through a JIT CUDA kernel
    (`sgl_moe_align_block_size`) that is imported only on CUDA/HIP/XPU/MUSA builds. Patched: the module-level
    name is bound to `align_block_size_torch` below.
  * `inplace_fused_experts` / `outplace_fused_experts` are torch custom ops registered for the CUDA dispatch key
    only. Patched: `fused_experts` calls their Python bodies.
  * The Triton block sizes are chosen per call from the token count; a config pinned for every call (small, so the
    interpreter runs few program instances) gives each row the same arithmetic whatever batch it is in.

Records (JSON lines, one per MoE layer call): {"pid", "path": "triton", "layer", "rows", "fused_calls",
"kernels", "aligns"} from the patched forward; {"pid", "path": "native", "rows"} from SGLang's native CPU MoE,
which must not run at all.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys

# Block sizes for every call: the embedded models' hidden and expert widths are 64, so each kernel instance makes one
# K step; few instances keep the interpreter fast.
PINNED_CONFIG = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}

_PKG = "sglang.srt.layers.moe.moe_runner.triton_utils"
_record_path = None
_current = None  # the MoE layer call in progress: its record, filled by the wrappers below


def _write(record: dict) -> None:
    with open(_record_path, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **record}) + "\n")


# -- moe_align_block_size's CUDA kernel, in torch (shared with the GPU device check) ------------------------------
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks", "device"))
from moe_align_torch import align_block_size_torch as _align  # noqa: E402  (imports torch only when called)


def align_block_size_torch(*args, **kwargs):
    _align(*args, **kwargs)
    if _current is not None:
        _current["aligns"] += 1


# -- patches, one per SGLang module ---------------------------------------------------------------------------------
def _patch_align(module) -> None:
    module.sgl_moe_align_block_size = align_block_size_torch


def _patch_fused_moe(module) -> None:
    def python_body(op):
        body = op.__wrapped__

        def call(hidden_states, *args, **kwargs):
            if _current is None:
                _write({"path": "triton", "layer": None, "rows": int(hidden_states.shape[0]), "fused_calls": 1})
            else:
                _current["fused_calls"] += 1
            return body(hidden_states, *args, **kwargs)

        return call

    module.inplace_fused_experts = python_body(module.inplace_fused_experts)
    module.outplace_fused_experts = python_body(module.outplace_fused_experts)
    launch = module.invoke_fused_moe_kernel

    def invoke_fused_moe_kernel(*args, **kwargs):
        if _current is not None:
            _current["kernels"] += 1
        return launch(*args, **kwargs)

    module.invoke_fused_moe_kernel = invoke_fused_moe_kernel


def _patch_triton_utils(package) -> None:
    package._config = dict(PINNED_CONFIG)  # what override_config sets, for every call of this process


def _patch_unquant(module) -> None:
    cls = module.UnquantizedFusedMoEMethod

    def triton_forward(self, layer, dispatch_output):
        global _current
        _current = {"path": "triton", "layer": getattr(layer, "layer_id", None),
                    "rows": int(dispatch_output.hidden_states.shape[0]), "fused_calls": 0, "kernels": 0, "aligns": 0}
        try:
            return cls.forward_cuda(self, layer, dispatch_output)
        finally:
            record, _current = _current, None
            _write(record)

    def native_forward(self, layer, dispatch_output):
        _write({"path": "native", "layer": getattr(layer, "layer_id", None),
                "rows": int(dispatch_output.hidden_states.shape[0])})
        return native(self, layer, dispatch_output)

    native = cls.forward_native
    cls.forward_native = native_forward
    cls._resolve_forward_method = lambda self: triton_forward.__get__(self)


_PATCHES = {
    f"{_PKG}.moe_align_block_size": _patch_align,
    f"{_PKG}.fused_moe": _patch_fused_moe,
    _PKG: _patch_triton_utils,
    "sglang.srt.layers.quantization.unquant": _patch_unquant,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch on a module as soon as its own code has run (before the importer gets it back)."""

    def find_spec(self, name, path, target=None):
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def install(record_path: str) -> None:
    global _record_path
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton MoE patch is for CPU-only machines, under TRITON_INTERPRET=1")
    _record_path = record_path
    already = [name for name in _PATCHES if name in sys.modules]
    if already:
        raise RuntimeError(f"install the Triton MoE patch before SGLang imports {already}")
    sys.meta_path.insert(0, _AfterImport())
