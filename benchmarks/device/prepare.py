"""Make benchmarks/device/carry/, what the device check takes to a GPU machine (run tool: carry that folder).

    .venv/bin/python benchmarks/device/prepare.py              # ~5 s: from the tracked file list
    .venv/bin/python benchmarks/device/prepare.py --discover   # re-derive that list (~1 min, see below)

carry/sglang/   the sglang 0.5.23 wheel's Python sources that the device check imports: the files named in
                sglang_files.txt plus every file under TREES (the fused-MoE runner, its kernels and Triton
                configs, SGLang's JIT helpers: code the GPU path may import from inside functions), unpacked
                from the wheel that `pip download sglang==0.5.23 --no-deps` fetches (cached in .cache/). The wheel
                is built for CPython 3.11; only its pure-Python files are taken (no compiled extension).
carry/wheels/   CPython 3.12 x86-64 wheels of the packages the check imports that the GPU image lacks or may lack
                (msgspec, dill; packaging and psutil, which it has), in the versions of this project's .venv;
                run.sh installs those whose module is missing there.

--discover unpacks all of the wheel's Python sources (less multimodal_gen/ and test/) into a staging folder,
runs the rehearsal there (the tiny run under the Triton interpreter and the CUDA-import rehearsal, in the bare
environment of bare_venv.py) recording the SGLang files imported, and writes them to sglang_files.txt. Redo it
when the check imports more of SGLang; tests/test_device_script.py fails on a missing file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CARRY = HERE / "carry"
FILE_LIST = HERE / "sglang_files.txt"
CACHE = REPO / ".cache" / "device-check"
SGLANG_VERSION = "0.5.23"
TREES = ("sglang/srt/layers/moe/moe_runner/", "sglang/kernels/ops/moe/", "sglang/kernels/ops/activation/",
         "sglang/kernels/jit/utils/")
DEVICE_WHEELS = ("msgspec", "dill", "packaging", "psutil")
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                    "manylinux1_x86_64")
SKIP_DISCOVER = ("sglang/multimodal_gen/", "sglang/test/")
# Folders SGLang checks for at import (its JIT loader: sources to compile with nvcc and tvm_ffi, which the check
# never builds): carried as placeholders.
PLACEHOLDER_DIRS = ("sglang/kernels/jit/include", "sglang/kernels/jit/csrc")

sys.path.insert(0, str(HERE))
import bare_venv


def pip_download(dest: Path, *args: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), *args], check=True)


def sglang_wheel() -> Path:
    found = sorted((CACHE / "wheel").glob(f"sglang-{SGLANG_VERSION}-*.whl"))
    if not found:
        pip_download(CACHE / "wheel", f"sglang=={SGLANG_VERSION}")
        found = sorted((CACHE / "wheel").glob(f"sglang-{SGLANG_VERSION}-*.whl"))
    return found[0]


def device_wheels(dest: Path) -> list[str]:
    """The DEVICE_WHEELS for CPython 3.12 on x86-64, at the versions installed in this environment (cached)."""
    pins = [f"{name}=={md.version(name)}" for name in DEVICE_WHEELS]
    cache = CACHE / "device-wheels"
    have = lambda pin: sorted(cache.glob(pin.replace("==", "-") + "-*.whl"))
    missing = [pin for pin in pins if not have(pin)]
    if missing:
        platforms = [arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)]
        pip_download(cache, "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                     *platforms, *missing)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pin in pins:
        shutil.copy2(have(pin)[-1], dest)
    return pins


def unpack(wheel: Path, dest: Path, keep) -> int:
    if dest.exists():
        shutil.rmtree(dest)
    n = 0
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith("sglang/") and not name.endswith("/") and not name.endswith(".so") and keep(name):
                zf.extract(name, dest)
                n += 1
    return n


def in_trees(name: str) -> bool:
    return any(name.startswith(t) for t in TREES)


def rehearse(python: Path, src: Path, list_file: Path | None = None) -> None:
    """The tiny run and the CUDA-import rehearsal against the sglang/ under `src`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TRITON_INTERPRET"] = "1"
    extra = ["--list-modules", str(list_file)] if list_file else []
    for mode in ([], ["--as-cuda"]):
        subprocess.run([str(python), str(HERE / "moe_kernel_check.py"), "--tiny", *mode, "--sglang-src", str(src),
                        *extra], check=True, env=env, cwd="/")


def discover(wheel: Path) -> None:
    staging = CACHE / "staging"
    n = unpack(wheel, staging, lambda name: not name.startswith(SKIP_DISCOVER))
    print(f"staged {n} files of {wheel.name}")
    python = bare_venv.make(CACHE / "venv")
    found = CACHE / "imported.txt"
    found.unlink(missing_ok=True)
    rehearse(python, staging, found)
    files = sorted({line.strip() for line in found.read_text().splitlines() if line.strip()})
    files = [f for f in files if not in_trees(f)]
    FILE_LIST.write_text("# sglang 0.5.23 files the device check imports outside prepare.py's TREES "
                         "(prepare.py --discover)\n" + "\n".join(files) + "\n")
    print(f"wrote {FILE_LIST.relative_to(REPO)}: {len(files)} files")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--discover", action="store_true", help="re-derive sglang_files.txt first")
    ap.add_argument("--no-device-wheels", action="store_true", help="skip carry/wheels (rehearsal only)")
    args = ap.parse_args()
    wheel = sglang_wheel()
    if args.discover:
        discover(wheel)
    wanted = {line.strip() for line in FILE_LIST.read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    n = unpack(wheel, CARRY, lambda name: name in wanted or in_trees(name))
    missing = wanted - {str(p.relative_to(CARRY)) for p in (CARRY / "sglang").rglob("*") if p.is_file()}
    if missing:
        raise SystemExit(f"not in {wheel.name}: {sorted(missing)[:5]}")
    for folder in PLACEHOLDER_DIRS:
        (CARRY / folder).mkdir(parents=True, exist_ok=True)
        (CARRY / folder / "PRUNED.txt").write_text("Left out by benchmarks/device/prepare.py: SGLang's import "
                                                   "checks that this folder exists; the device check builds "
                                                   "no JIT kernel.\n")
    pins = [] if args.no_device_wheels else device_wheels(CARRY / "wheels")
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (CARRY / "PREPARED").write_text(f"{wheel.name} sha256={digest}\nfiles={n}\nwheels={' '.join(pins)}\n")
    print(f"{CARRY.relative_to(REPO)}: {n} sglang files{', wheels ' + ' '.join(pins) if pins else ''}; "
          f"{size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
