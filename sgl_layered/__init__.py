"""sgl-layered: layered prefill for SGLang (arXiv 2510.08055).

`import sgl_layered` stays light; `sgl_layered.Engine` imports SGLang on first use.
"""

__version__ = "0.1.0"
SGLANG_PIN = "0.5.23"

__all__ = ["Engine", "SGLANG_PIN", "__version__"]


def __getattr__(name):
    if name == "Engine":
        from sgl_layered.adapter.engine import Engine

        return Engine
    raise AttributeError(f"module 'sgl_layered' has no attribute {name!r}")
