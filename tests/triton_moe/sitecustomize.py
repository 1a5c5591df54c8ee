"""Test-only: with this folder on PYTHONPATH and TRITON_MOE_RECORD set, every Python process started (SGLang's
spawned scheduler processes included) runs SGLang's Triton fused MoE on CPU and records each MoE call
(triton_moe_patch.py). Without TRITON_MOE_RECORD it does nothing but hand over to any other sitecustomize."""

import importlib.machinery
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))

if os.environ.get("TRITON_MOE_RECORD"):
    sys.path.insert(0, _here)
    try:
        import triton_moe_patch
    finally:
        sys.path.remove(_here)
    triton_moe_patch.install(os.environ["TRITON_MOE_RECORD"])

# This file shadows any sitecustomize later on sys.path (an environment's own): run that one too.
_others = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _others)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
