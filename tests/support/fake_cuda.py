"""A pytest plugin (`-p fake_cuda`, with tests/support on PYTHONPATH) that makes this process believe a CUDA
device is present, and writes what the session collected and its SGLang environment to $FAKE_CUDA_REPORT."""

import json
import os

import torch

torch.cuda.is_available = lambda: True


def pytest_collection_finish(session):
    keys = ("SGLANG_USE_CPU_ENGINE", "SGLANG_NCCL_SO_PATH")
    with open(os.environ["FAKE_CUDA_REPORT"], "w") as f:
        json.dump({"items": [item.nodeid for item in session.items],
                   "env": {k: os.environ.get(k) for k in keys}}, f)
