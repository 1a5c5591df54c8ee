#!/usr/bin/env bash
# The device check (issue 14 item 5) on a GPU machine, from the repository root. What the `run` device tool executes:
#
#   run(command="bash benchmarks/device/run.sh", carry=["benchmarks/device/carry"], timeout_s=600)
#
# benchmarks/device/carry/ must be made first, where you call from: .venv/bin/python benchmarks/device/prepare.py
# (about 9 MiB: SGLang's sources for the check, and wheels of msgspec, dill, packaging, psutil for CPython 3.12).
# The GPU machine needs python3 with torch and triton, and no SGLang, sgl_kernel or network.
#
# Writes to $OUT (the tool's folder that comes back; elsewhere benchmarks/results/device-moe/):
#   moe_kernel_check.json   every case: time, DRAM bytes (ncu), byte model, HBM floor, checks, stand-ins used
#   log.txt                 the run's output
#   ncu_<model>.csv         Nsight Compute's raw CSV, one per model
# Estimated time on an H200 (not measured yet): SGLang import and Triton compiles ~1 min, timing ~1 min, the
# two ncu passes 1-3 min: 3-5 min in all. The script stops starting new work after --deadline-s (500 s here).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results/device-moe}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
CARRY=benchmarks/device/carry
if [[ ! -d $CARRY/sglang ]]; then
  echo "no $CARRY/sglang: run .venv/bin/python benchmarks/device/prepare.py here, then carry $CARRY" | tee "$OUT/log.txt"
  exit 2
fi
SITE=/tmp/device-check-site
for whl in "$CARRY"/wheels/*.whl; do
  [[ -e $whl ]] || continue
  mod=$(basename "$whl" | cut -d- -f1)
  if ! "$PY" -c "import $mod" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$whl" || exit 3
    echo "installed $(basename "$whl") into $SITE" | tee -a "$OUT/log.txt"
  fi
done
[[ -d $SITE ]] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/device-check-pycache
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv
  "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)"
  command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null
} 2>&1 | tee -a "$OUT/log.txt"
"$PY" benchmarks/device/moe_kernel_check.py --out "$OUT/moe_kernel_check.json" --deadline-s 500 "$@" 2>&1 \
  | tee -a "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
