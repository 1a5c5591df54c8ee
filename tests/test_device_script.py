"""Rehearsal of the device check (benchmarks/device/, issue 14 item 5) on a CPU-only machine.

The GPU machine has Python, torch and triton, and no SGLang, sgl_kernel or network. Here the same script runs in
a bare virtual environment (benchmarks/device/bare_venv.py: `venv --without-pip`, links to torch, triton and
what they need, plus numpy, packaging, psutil, msgspec and dill; not this project's .venv), against the SGLang
sources prepare.py unpacks into benchmarks/device/carry/ (the folder carried to the GPU), at tiny shapes under
Triton's interpreter, twice: on SGLang's CPU code path, and on its CUDA code path with CUDA faked as an H200 (what
the GPU run executes, CPU tensors). A venv with pip-installed torch was not used: installing torch alone takes
minutes; links take under a second and the assertions below pin what the environment holds.

The pure parts that only run on the GPU (ncu's CSV, the ncu plan's bookkeeping, the torch align) are checked here
in-process, ncu with a stand-in executable.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "benchmarks" / "device"
CARRY = DEVICE / "carry"
VENV = REPO / ".cache" / "device-check" / "venv"
sys.path.insert(0, str(DEVICE))

import bare_venv
import moe_kernel_check as mkc


def _clean_env(**extra) -> dict:
    """No PYTHONPATH, no SGLang settings of the CPU suite: what a bare GPU machine's shell has."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SGLANG_", "TRITON_", "PYTHON")) and k not in ("VIRTUAL_ENV",)}
    env.update({"PYTHONPYCACHEPREFIX": str(REPO / ".cache" / "device-check" / "pycache"), **extra})
    return env


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """prepare.py (from the tracked file list), the bare venv, and both tiny runs side by side (2 cores)."""
    t0 = time.time()
    subprocess.run([sys.executable, str(DEVICE / "prepare.py")], check=True, cwd=REPO, timeout=300)
    python = bare_venv.make(VENV)
    prepared = time.time() - t0
    out = tmp_path_factory.mktemp("device-check")
    runs = {}
    for name, extra in (("cpu", []), ("as_cuda", ["--as-cuda"])):
        log = open(out / f"{name}.log", "w")
        cmd = [str(python), str(DEVICE / "moe_kernel_check.py"), "--tiny", *extra, "--out", str(out / f"{name}.json")]
        runs[name] = (subprocess.Popen(cmd, cwd=out, env=_clean_env(TRITON_INTERPRET="1"), stdout=log,
                                       stderr=subprocess.STDOUT), log)
    results = {}
    for name, (proc, log) in runs.items():
        rc = proc.wait(timeout=600)
        log.close()
        text = (out / f"{name}.log").read_text()
        assert rc == 0, f"{name} run failed (rc {rc}):\n{text[-6000:]}"
        results[name] = json.loads((out / f"{name}.json").read_text())
        results[name]["_log"] = text
    print(f"prepare + venv {prepared:.1f} s, runs {time.time() - t0 - prepared:.1f} s")
    return SimpleNamespace(python=python, reports=results)


def test_bare_venv_holds_torch_and_triton_but_no_sglang_nor_sgl_kernel(rehearsal):
    probe = textwrap.dedent(f"""
        import importlib.util, json, sys, sysconfig
        site = sysconfig.get_paths()["purelib"]
        out = {{"prefix": sys.prefix, "entries": sorted(__import__("os").listdir(site))}}
        for name in ("torch", "triton", "sglang", "sgl_kernel", "transformers", "pydantic", "zmq"):
            spec = importlib.util.find_spec(name)
            out[name] = spec.origin if spec else None
        sys.path.insert(0, {str(CARRY)!r})
        out["sglang_with_carry"] = importlib.util.find_spec("sglang").origin
        print(json.dumps(out))
    """)
    got = json.loads(subprocess.run([str(rehearsal.python), "-c", probe], check=True, capture_output=True,
                                    text=True, env=_clean_env(), cwd="/").stdout)
    assert Path(got["prefix"]) == VENV
    assert got["torch"] and got["triton"]
    assert got["sglang"] is None and got["sgl_kernel"] is None
    assert got["transformers"] is None and got["pydantic"] is None and got["zmq"] is None
    assert got["sglang_with_carry"] == str(CARRY / "sglang" / "__init__.py")
    tops = {e.split("-")[0].lower() for e in got["entries"] if not e.startswith("__")}
    assert {"torch", "triton", "numpy", "msgspec", "dill"} <= tops
    assert not tops & {"sglang", "sgl_kernel", "transformers", "pydantic", "sgl_layered"}


@pytest.mark.parametrize("mode", ["cpu", "as_cuda"])
def test_tiny_run_matches_reference_and_layered_equals_chunked(rehearsal, mode):
    report = rehearsal.reports[mode]
    assert report["ok"], report.get("error")
    assert report["sglang_file"] == str(CARRY / "sglang" / "__init__.py")
    assert report["fused_moe_cuda_path"] is (mode == "as_cuda")
    assert len(report["cases"]) == 4  # two tiny models x (layered, chunked)
    for case in report["cases"]:
        check = case["check"]
        assert check["ok"] and check["pinned_config"]
        assert check["chunked_equal_layered"], case["key"]  # same config: the same arithmetic row by row
        assert check["reference_max_abs"] <= 5e-3 * check["reference_scale"]
        if case["mode"] == "chunked":
            assert case["calls"] == 2 and all(r > 32 for r in case["rows_per_call"])
    stand_ins = {s["what"]: s["how"] for s in report["stand_ins"]}
    assert "pure torch" in stand_ins["moe_align_block_size kernel"]
    assert "stand-in module" in stand_ins["sgl_kernel"]
    assert "[stand-in] moe_align_block_size kernel" in report["_log"]  # printed, not only recorded
    assert report["runtime_config"]["exec.moe.enable_fused_moe_sum_all_reduce"] is False
    assert {"transformers", "pydantic", "zmq"} <= set(report["stubbed_modules"])


def test_cuda_path_rehearsal_uses_the_gpu_fallbacks_and_h200_configs(rehearsal):
    report = rehearsal.reports["as_cuda"]
    stand_ins = {s["what"]: s["how"] for s in report["stand_ins"]}
    assert "SGLang's own failed" in stand_ins["moe_align_block_size kernel"]  # sgl_kernel's AOT align is absent
    assert "torch, all rows" in stand_ins["silu_and_mul"]  # SGLang's JIT activation needs tvm_ffi
    assert "moe_align_block_size" in report["sgl_kernel_unavailable_names"]
    assert report["runtime_config"]["published"].endswith("resolved by SGLang's publish") \
        and "device='cuda'" in report["runtime_config"]["published"]
    qwen = report["gpu_configs"]["Qwen3-30B-A3B"]
    assert qwen["file"]["used"].endswith("/E=128,N=768,device_name=NVIDIA_H200.json")
    assert report["gpu_configs"]["GPT-OSS-20B"]["file"]["used"] is None  # SGLang's default config on the GPU
    assert "gdc_wait" in report["rehearsal_only"]


def test_carry_is_small():
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    assert size < 16 * 2**20, f"{size / 2**20:.1f} MiB"
    assert not list(CARRY.rglob("*.so")) and not list(CARRY.rglob("__pycache__"))
    assert {w.name.split("-")[0] for w in (CARRY / "wheels").glob("*.whl")} == {"msgspec", "dill", "packaging",
                                                                                 "psutil"}
    assert all("cp312" in w.name or "py3-none-any" in w.name or "abi3" in w.name
               for w in (CARRY / "wheels").glob("*.whl"))


def _python312():
    import shutil

    for candidate in (shutil.which("python3.12"), *sorted(Path("/root/.pyenv/versions").glob("3.12*/bin/python3.12"))):
        if candidate and subprocess.run([str(candidate), "-c", "pass"], capture_output=True).returncode == 0:
            return str(candidate)
    return None


def test_carried_sources_compile_under_python_312(rehearsal, tmp_path):
    """The GPU machine's Python is 3.12; the wheel is tagged for 3.11 (its compiled extensions, not carried)."""
    python = _python312()
    if python is None:
        pytest.skip("no Python 3.12 interpreter on this machine")
    run = subprocess.run([python, "-m", "compileall", "-q", str(CARRY / "sglang"), str(DEVICE)], capture_output=True,
                         text=True, env=_clean_env(PYTHONPYCACHEPREFIX=str(tmp_path)))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


# -- the GPU-only pieces, in-process --------------------------------------------------------------------------------
def test_torch_align_matches_the_kernel_contract():
    import torch

    g = torch.Generator().manual_seed(0)
    for rows, k, experts, block in ((37, 2, 8, 16), (5, 4, 16, 4), (64, 8, 128, 64)):
        ids = torch.randint(0, experts, (rows, k), generator=g, dtype=torch.int32)
        buckets, numel = experts + 1, ids.numel()
        sorted_ids = torch.empty(numel + buckets * (block - 1) + 3, dtype=torch.int32)
        expert_ids = torch.empty(-(-sorted_ids.numel() // block), dtype=torch.int32)
        post, cumsum = torch.empty(1, dtype=torch.int32), torch.empty(buckets + 2, dtype=torch.int32)
        mkc.align_block_size_torch(ids, buckets, block, sorted_ids, expert_ids, post, cumsum, True)
        flat, pos = ids.flatten().tolist(), 0
        for e in range(-1, experts):  # bucket e + 1: its slots in order, padded to a block multiple
            slots = [i for i, x in enumerate(flat) if x == e]
            padded = -(-len(slots) // block) * block
            assert sorted_ids[pos: pos + padded].tolist() == slots + [numel] * (padded - len(slots))
            assert expert_ids[pos // block: (pos + padded) // block].tolist() == [e] * (padded // block)
            assert cumsum[e + 1].item() == pos
            pos += padded
        assert post.item() == pos


NCU_CSV_HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
                  '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def _fake_ncu(tmp_path: Path, launches_delta: int = 0) -> Path:
    """An `ncu` that writes, for --launch-count N (+ delta), N launches of --kernel-name in ncu's CSV format."""
    script = tmp_path / "ncu"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        a = sys.argv
        n = int(a[a.index("--launch-count") + 1]) + {launches_delta}
        name = a[a.index("--kernel-name") + 1]
        rows = ["==PROF== Connected to process 1", {NCU_CSV_HEADER!r}]
        for i in range(n):
            for metric, unit, value in (("dram__bytes_read.sum", "byte", f"{{(i + 1) * 1000:,}}"),
                                        ("gpu__time_duration.sum", "nsecond", f"{{(i + 1) * 10:,}}")):
                rows.append(",".join(f'"{{v}}"' for v in (i, 1, "python3", "h", name, 1, 7, "(128, 1, 1)",
                                                         "(9, 1, 1)", 0, "9.0", "Command line profiler metrics",
                                                         metric, unit, value)))
        open(a[a.index("--log-file") + 1], "w").write("\\n".join(rows) + "\\n")
    """))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_ncu_launches_are_mapped_to_cases(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_fake_ncu(tmp_path).parent) + os.pathsep + os.environ["PATH"])
    plan = mkc.plan_for("Qwen3-30B-A3B", tiny=False)
    assert [p["calls"] for p in plan] == [1, 4, 1, 4, 1, 16, 1, 16]
    args = SimpleNamespace(out=str(tmp_path / "r.json"), sglang_src=CARRY)
    res = mkc.ncu_model(args, "Qwen3-30B-A3B", plan, deadline=time.time() + 60)
    assert "error" not in res, res
    assert res["launches"] == res["expected_launches"] == 2 * 44
    first, second = res["cases"][plan[0]["key"]], res["cases"][plan[1]["key"]]
    assert first["launches"] == 2 and first["dram_bytes_read"] == 1000 + 2000
    assert first["kernel_ms"] == pytest.approx(30e-6)
    assert second["launches"] == 8 and second["dram_bytes_read"] == sum(range(3, 11)) * 1000
    assert "--kernel-name fused_moe_kernel" in res["cmd"] and "dram__bytes_read.sum" in res["cmd"]


def test_ncu_launch_count_mismatch_is_reported_not_guessed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_fake_ncu(tmp_path, launches_delta=-1).parent) + os.pathsep + os.environ["PATH"])
    plan = mkc.plan_for("GPT-OSS-20B", tiny=False)
    res = mkc.ncu_model(SimpleNamespace(out=str(tmp_path / "r.json"), sglang_src=CARRY), "GPT-OSS-20B", plan,
                        deadline=time.time() + 60)
    assert "cases" not in res and "expected" in res["error"]


def test_byte_model_counts_distinct_experts_once():
    import torch

    shape = dict(experts=8, top_k=2, hidden=4, intermediate=3, elt_bytes=2)
    ids = torch.tensor([[0, 1], [1, 2], [0, 2]])
    m = mkc.byte_model(shape, ids)
    assert m["distinct_experts"] == 3 and m["expert_bytes"] == 3 * 3 * 4 * 3 * 2
    assert m["activation_bytes"] == 3 * 4 * 2 + 3 * 2 * 3 * 2 + 3 * 2 * 4


def test_gpu_run_bookkeeping_with_stand_ins(tmp_path, monkeypatch):
    """The non-tiny path of run_cases (what the GPU run executes after the kernels), with SGLang, CUDA events and
    ncu stood in for: every case gets its byte model, floors, time, ncu bytes, and the summary its ratios."""
    import contextlib

    import torch

    class FakeMoE:
        def __init__(self):
            self.torch = torch

        def call(self, x, w1, w2, weights, ids, logits, top_k):
            return mkc.reference(torch, x, w1, w2, weights, ids).to(x.dtype)

        def configs(self, *a):
            return {"up": {"BLOCK_SIZE_M": 64}, "down": None}

        def config_file(self, E, I):
            return {"name": f"E={E},N={I}", "used": None}

        override_config = staticmethod(lambda cfg: contextlib.nullcontext())

    tiny = {"experts": 8, "top_k": 2, "hidden": 32, "intermediate": 16, "elt_bytes": 4, "dtype": "float32"}
    monkeypatch.setattr(mkc, "model_shapes", lambda tiny_run: {m: dict(tiny) for m in mkc.MODELS})
    monkeypatch.setattr(mkc, "PROMPT_ROWS", (40,))
    monkeypatch.setattr(mkc, "CHUNK", 16)
    monkeypatch.setattr(mkc, "time_calls", lambda moe, calls, *a: {"median_ms": 0.5 + len(calls),
                                                                   "fused_moe_kernel_ms": 0.4 * len(calls)})
    monkeypatch.setenv("PATH", str(_fake_ncu(tmp_path).parent) + os.pathsep + os.environ["PATH"])
    args = SimpleNamespace(tiny=False, no_ncu=False, warmup=1, repeats=1, out=str(tmp_path / "r.json"),
                           sglang_src=CARRY)
    report = {"hbm": mkc.hbm_profiles()}
    mkc.run_cases(args, FakeMoE(), report, "cpu", deadline=time.time() + 120)
    assert len(report["cases"]) == 2 * 2 * 2  # models x decode rows x modes
    for case in report["cases"]:
        assert case["check"]["ok"] and case["hbm_floor_ms"] > 0 and case["time"]["median_ms"] > 0
        assert case["ncu"]["launches"] == 2 * case["calls"] and case["ncu"]["dram_bytes_read"] > 0
        assert case["hbm_floor_ms"] == pytest.approx(case["model_bytes"] / 4.8e12 * 1e3)
    assert len(report["summary_chunked_over_layered"]) == 4
    s = report["summary_chunked_over_layered"][0]
    assert s["time_ratio"] == pytest.approx(3.5 / 1.5) and s["model_bytes_ratio"] > 1 and "dram_bytes_ratio" in s
    assert set(report["ncu"]) == set(mkc.MODELS) and all("error" not in v for v in report["ncu"].values())
    json.dumps(report)
