"""`pytest -q` on a machine with CUDA runs the CPU suite as here (SGLang's CPU engine, GPU tests not collected),
and `pytest --gpu` runs only tests/gpu with the machine's own settings. Simulated: a plugin makes the pytest
process see torch.cuda.is_available() == True. The package's launch helpers pick CPU settings only without CUDA."""

import json
import os
import subprocess
import sys

from sgl_layered import cpu

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _pytest_with_fake_cuda(tmp_path, *args):
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in cpu.CPU_ENV}  # as on a fresh GPU machine
    env.update(PYTHONPATH=os.path.join(HERE, "support"), FAKE_CUDA_REPORT=str(report))
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "fake_cuda", "-q", "-p", "no:cacheprovider", *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return run, json.loads(report.read_text())


def test_cpu_suite_unharmed_where_cuda_is_present(tmp_path):
    run, report = _pytest_with_fake_cuda(tmp_path, "tests/test_core.py", "tests/gpu")
    assert run.returncode == 0, run.stdout[-3000:]
    assert report["items"] and all(i.startswith("tests/test_core.py::") for i in report["items"])
    assert report["env"] == cpu.CPU_ENV  # the CPU suite keeps SGLang's CPU engine


def test_gpu_option_collects_only_gpu_tests_with_machine_settings(tmp_path):
    run, report = _pytest_with_fake_cuda(tmp_path, "--gpu", "--collect-only", "tests")
    assert run.returncode == 0, run.stdout[-3000:]
    assert report["items"] and all(i.startswith("tests/gpu/") for i in report["items"])
    assert report["env"] == {k: None for k in cpu.CPU_ENV}


def test_launch_helpers_choose_cpu_settings_only_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu.machine_env() == {} and cpu.machine_server_args() == []
    assert "device" not in cpu.machine_engine_kwargs()
    assert cpu.env_for_server_args(["--device", "cpu"]) == cpu.CPU_ENV  # an explicit CPU server still gets it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cpu.machine_env() == cpu.CPU_ENV and "--device" in cpu.machine_server_args()
    assert cpu.machine_engine_kwargs()["device"] == "cpu"
    assert cpu.env_for_server_args([]) == cpu.CPU_ENV
