#!/usr/bin/env bash
# Create (or confirm) the CPU development environment in .venv: SGLang 0.5.23 serving on a CPU-only machine.
#
#   bash tools/setup_cpu_env.sh        # idempotent: a ready environment is confirmed in about a second
#
# What it installs and why:
#   * torch 2.14.1 + torchvision 0.29.1 as a pair (SGLang's torch pin; an unpinned torchvision drags in another torch);
#   * sglang==0.5.23 with --no-deps (its dependency list is ~11 GB of CUDA-only kernels), plus the packages its CPU
#     engine imports (tools/requirements-cpu.txt, versions fixed by tools/constraints-cpu.txt);
#   * sgl-kernel-cpu-standin: a small pure-torch stand-in for the few sgl_kernel ops SGLang's CPU engine imports
#     (no CPU build of sgl-kernel is published). It goes into this environment only, never into a GPU install;
#   * this project, editable, so its `sglang.srt.plugins` entry point is registered.
# Nothing installed by pip is patched afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
SGLANG_VERSION=0.5.23

inputs_digest() {
  cat tools/setup_cpu_env.sh tools/requirements-cpu.txt tools/constraints-cpu.txt pyproject.toml \
      tools/sgl_kernel_cpu_standin/pyproject.toml tools/sgl_kernel_cpu_standin/sgl_kernel/*.py | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.sgl_layered_env"
WANT=$(inputs_digest)

# The trained checkpoint's corpus (sgl_layered/models/train.py): the English text of Debian's `fortunes` package.
# Only its training and one corpus test need it; where it cannot be installed those say so (the test skips).
if [[ ! -d /usr/share/games/fortunes ]]; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    (apt-get install -y -qq fortunes >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fortunes >/dev/null 2>&1; }) \
      && echo "Installed Debian's fortunes (the trained checkpoint's corpus)." \
      || echo "Could not install Debian's fortunes: training trained-qwen3-moe and its corpus test will not run."
  else
    echo "Debian's fortunes is not installed (needs root and apt-get): training trained-qwen3-moe and its corpus test will not run."
  fi
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c "import importlib.metadata as m, sgl_layered; assert m.version('sglang') == '$SGLANG_VERSION'" 2>/dev/null; then
  echo "CPU environment in .venv is up to date."
  exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=24"
"${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" install --no-deps "sglang==$SGLANG_VERSION"
"${PIP[@]}" install -r tools/requirements-cpu.txt -c tools/constraints-cpu.txt
"${PIP[@]}" install --no-deps ./tools/sgl_kernel_cpu_standin
"${PIP[@]}" install --no-deps --no-build-isolation -e .
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import sglang, sgl_kernel, torch
assert sglang.__version__ == "0.5.23", sglang.__version__
assert getattr(sgl_kernel, "IS_CPU_STANDIN", False), "sgl_kernel here must be the CPU stand-in"
eps = [ep.name for ep in md.entry_points(group="sglang.srt.plugins")]
assert "sgl_layered" in eps, f"plugin entry point missing: {eps}"
print(f"sglang {sglang.__version__}, torch {torch.__version__}, plugin entry points {eps}")
PY
echo "$WANT" > "$STAMP"
echo "CPU environment ready in .venv ($(( $(date +%s) - start )) s)."
