"""GPU end-to-end tests: `pytest --gpu` (from the repository root) runs these and only these, on a machine with
CUDA and SGLang's GPU install; plain `pytest` never collects them (tests/conftest.py), so the CPU suite and the
GPU suite never share a process or an environment."""

import pytest


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        item.add_marker(skip)
