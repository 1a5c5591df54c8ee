"""Hardware profiles for the cost model.

GPU figures are the vendors' datasheet numbers (labelled as such) unless a profile says it was measured.
The H200 "measured" profile uses ceilings measured on an H200 in this workplace (device-to-device copy about
4.3 TB/s counting read and write bytes; 8192^3 bf16 matmul about 788 TFLOP/s on random data). The CPU profile
is fitted to our own CPU benchmark (see sgl_layered/sim/calibrate.py) and carries its fit error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    name: str
    mem_bw: float  # bytes/s achievable for streaming weights / KV
    flops: float  # dense bf16 matmul FLOP/s
    launch_s: float  # fixed cost per layer-op (kernel launches, sync, framework overhead)
    interconnect_bw: float = 450e9  # bytes/s per GPU for TP all-reduce (NVLink 4, datasheet, one direction)
    source: str = "datasheet"
    combine: str = "max"  # GPUs overlap memory and compute (max); the CPU fit adds them (sum)


H100 = Hardware("H100-SXM", mem_bw=3.35e12, flops=989e12, launch_s=8e-6, source="datasheet")
H200 = Hardware("H200-SXM", mem_bw=4.8e12, flops=989e12, launch_s=8e-6, source="datasheet")
H200_MEASURED = Hardware("H200-measured", mem_bw=4.3e12, flops=788e12, launch_s=8e-6,
                         source="measured here: D2D copy 4.3 TB/s, bf16 GEMM 788 TFLOP/s")
# Fitted by benchmarks/sim_calibrate_cpu.py to this project's CPU benchmark (2 cores, fp32, SGLang's CPU engine):
# overhead 9.7 ms per iteration, 8.4 GB/s, 567 GFLOP/s; median abs error 15% (fit), 9-24% held out.
CPU_CALIBRATED = Hardware("CPU-calibrated", mem_bw=8.434e9, flops=566.7e9, launch_s=0.0, interconnect_bw=10e9,
                          source="fitted to the CPU benchmark traces (benchmarks/results/default/cpu_calibration.json)",
                          combine="sum")
ITERATION_OVERHEAD_S = {"CPU-calibrated": 0.0097}  # fitted with the profile; GPU runs use the simulator's 2 ms
PROFILES = {h.name: h for h in (H100, H200, H200_MEASURED, CPU_CALIBRATED)}
