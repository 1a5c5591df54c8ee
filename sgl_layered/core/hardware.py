"""Hardware profiles for the cost model.

GPU figures are the vendors' datasheet numbers (labelled as such) unless a profile says it was measured.
The H200 "measured" profile uses ceilings measured on an H200 in this workplace (device-to-device copy about
4.3 TB/s counting read and write bytes; 8192^3 bf16 matmul about 788 TFLOP/s on random data). The CPU profile
is fitted to our own CPU benchmark (see sgl_layered/sim/calibrate.py) and carries its fit error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Energy figures (dynamic energy only; see Hardware.dynamic_energy_j).
#
# HBM access energy: about 3.9 pJ per bit for HBM2 (row activation + on-die data movement + I/O), the baseline of
# O'Connor et al., "Fine-Grained DRAM: Energy-Efficient DRAM for Extreme Bandwidth Systems", MICRO-50 (2017),
# doi:10.1145/3123939.3124545, whose FGDRAM halves it. The figure is as we recall it from that paper (its body
# could not be reopened in the session that wrote this); HBM3 (H100) and HBM3e (H200) are not HBM2, and
# published per-bit figures for them were not available to us, so the same 3.9 pJ/bit is used for every GPU
# profile: a published HBM2 figure, not a measured one, and likely on the high side for newer stacks.
HBM2_J_PER_BYTE = 3.9e-12 * 8
# Energy per FLOP: no published per-FLOP figure for Hopper tensor cores was available to us. We use the derived
# bound board power / peak rate: an H100 SXM or H200 SXM draws at most its 700 W configurable TDP (datasheets), so
# at the datasheet's 989 TFLOP/s dense bf16 one FLOP costs at most 700 / 989e12 = 0.71 pJ all-in. It is an UPPER
# BOUND on the arithmetic's energy (it charges the whole board, HBM and idle power included, to the math) and it
# assumes the peak rate is sustainable inside TDP (real GPUs lower clocks instead, which is why the measured
# profile's rate gives a higher bound). For scale: Horowitz (ISSCC 2014, 45 nm) gives 1.1 pJ for a 16-bit float
# multiply and 0.4 pJ for an add, i.e. about 0.75 pJ per FLOP for an FMA at 45 nm; a 4 nm tensor core spends less.
GPU_TDP_W = 700.0  # H100 SXM and H200 SXM: "up to 700 W (configurable)" (NVIDIA datasheets)


@dataclass(frozen=True)
class Hardware:
    name: str
    mem_bw: float  # bytes/s achievable for streaming weights / KV
    flops: float  # dense bf16 matmul FLOP/s
    launch_s: float  # fixed cost per layer-op (kernel launches, sync, framework overhead)
    interconnect_bw: float = 450e9  # bytes/s per GPU for TP all-reduce (NVLink 4, datasheet, one direction)
    source: str = "datasheet"
    combine: str = "max"  # GPUs overlap memory and compute (max); the CPU fit adds them (sum)
    # Dynamic energy per HBM byte moved and per FLOP (None: the profile states none, no energy is reported).
    # Static/idle power is not modelled: no profile carries a sourced figure for it (see dynamic_energy_j).
    j_per_byte: Optional[float] = None
    j_per_flop: Optional[float] = None
    energy_source: str = ""

    @property
    def has_energy(self) -> bool:
        return self.j_per_byte is not None and self.j_per_flop is not None

    def dynamic_energy_j(self, hbm_bytes: float, flops: float) -> Optional[dict]:
        """Dynamic energy of moving `hbm_bytes` through HBM and doing `flops`: bytes x J/byte + FLOPs x J/FLOP.
        Leaves out static/idle power x time, NVLink/all-reduce traffic, on-chip SRAM traffic beyond what the
        per-FLOP bound covers, and host/CPU energy. None when the profile states no figures."""
        if not self.has_energy:
            return None
        byte_j, flop_j = hbm_bytes * self.j_per_byte, flops * self.j_per_flop
        return {"byte_J": byte_j, "flop_J": flop_j, "dynamic_J": byte_j + flop_j}


_GPU_ENERGY = ("HBM: 3.9 pJ/bit (HBM2, O'Connor et al. MICRO 2017); FLOP: upper bound 700 W TDP / {peak} "
               "({rate:.2f} pJ/FLOP)")


def _gpu(name: str, mem_bw: float, flops: float, source: str) -> Hardware:
    return Hardware(name, mem_bw=mem_bw, flops=flops, launch_s=8e-6, source=source, j_per_byte=HBM2_J_PER_BYTE,
                    j_per_flop=GPU_TDP_W / flops,
                    energy_source=_GPU_ENERGY.format(peak=f"{flops / 1e12:.0f} TFLOP/s",
                                                     rate=GPU_TDP_W / flops * 1e12))


H100 = _gpu("H100-SXM", 3.35e12, 989e12, "datasheet")
H200 = _gpu("H200-SXM", 4.8e12, 989e12, "datasheet")
# Its FLOP bound assumes the card that measured 788 TFLOP/s ran under a 700 W limit (its limit was not recorded).
H200_MEASURED = _gpu("H200-measured", 4.3e12, 788e12, "measured here: D2D copy 4.3 TB/s, bf16 GEMM 788 TFLOP/s")
# Fitted by benchmarks/sim_calibrate_cpu.py to this project's CPU benchmark (2 cores, fp32, SGLang's CPU engine):
# overhead 9.7 ms per iteration, 8.4 GB/s, 567 GFLOP/s; median abs error 15% (fit), 9-24% held out.
CPU_CALIBRATED = Hardware("CPU-calibrated", mem_bw=8.434e9, flops=566.7e9, launch_s=0.0, interconnect_bw=10e9,
                          source="fitted to the CPU benchmark traces (benchmarks/results/default/cpu_calibration.json)",
                          combine="sum")  # no energy figures: a 2-core CPU's per-byte/per-FLOP energy is unsourced
ITERATION_OVERHEAD_S = {"CPU-calibrated": 0.0097}  # fitted with the profile; GPU runs use the simulator's 2 ms
PROFILES = {h.name: h for h in (H100, H200, H200_MEASURED, CPU_CALIBRATED)}
