"""GPU end-to-end tests: run them on their own (`pytest tests/gpu`) on a machine with CUDA and SGLang's GPU
install. They undo the CPU-engine settings the parent conftest applies for the CPU suite."""

import os

import pytest

from sgl_layered import cpu


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAVE_CUDA = _cuda()
if HAVE_CUDA:
    for key in cpu.CPU_ENV:
        os.environ.pop(key, None)


def pytest_collection_modifyitems(config, items):
    if HAVE_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
