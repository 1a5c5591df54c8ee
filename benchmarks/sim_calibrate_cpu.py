"""Calibrate the simulator's CPU profile against the real CPU benchmark's iteration times, report the error.

    .venv/bin/python benchmarks/sim_calibrate_cpu.py [benchmarks/results/default]

Fits on the traces of some modes (model routing: SGLang default, chunked-512, layered-auto) and reports the
error on the others (chunked-2048, layered G2/G4/G8), iteration by iteration. Writes cpu_calibration.json.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sgl_layered.sim import calibrate  # noqa: E402
from sgl_layered.core.shapes import MODELS  # noqa: E402
from sim_report import git_state  # noqa: E402

FIT = ["sglang-default", "chunked-512", "layered-auto"]
TEST = ["chunked-2048", "layered-G2", "layered-G4", "layered-G8"]


def rows(directory, mode):
    import gzip

    path = os.path.join(directory, f"trace-model-{mode}.jsonl")
    with (gzip.open(path + ".gz", "rt") if os.path.exists(path + ".gz") else open(path)) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(directory):
    m = MODELS["bench-qwen3-moe"]
    fit_rows = [r for mode in FIT for r in rows(directory, mode)]
    coef = calibrate.fit(fit_rows, m)
    hw, overhead = calibrate.cpu_profile(coef, "fitted to this machine's CPU benchmark traces")
    report = {"coef": {"overhead_s": coef[0], "s_per_layer_call": coef[1], "s_per_byte": coef[2],
                       "s_per_flop": coef[3]},
              "profile": {"mem_bw_GBps": hw.mem_bw / 1e9, "GFLOPs": hw.flops / 1e9,
                          "launch_s": hw.launch_s, "iteration_overhead_s": overhead},
              "fit_error": calibrate.errors(fit_rows, m, coef),
              "heldout_error": {mode: calibrate.errors(rows(directory, mode), m, coef) for mode in TEST},
              **git_state()}
    with open(os.path.join(directory, "cpu_calibration.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                             "default"))
