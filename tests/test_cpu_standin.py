"""The sgl_kernel CPU stand-in computes what SGLang's kernels compute (checked against SGLang's own Triton kernel
under Triton's interpreter)."""

import subprocess
import sys

CODE = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch, sgl_kernel
from sglang.kernels.ops.sampling.murmur_hash import murmur_hash32_kernel
assert sgl_kernel.IS_CPU_STANDIN
g = torch.Generator().manual_seed(3)
seed = torch.randint(0, 2**62, (7,), generator=g)
pos = torch.randint(0, 2**31 - 1, (7,), generator=g)
cols = torch.arange(300)
ours = torch.ops.sgl_kernel.murmur_hash32_cpu(seed, pos, cols)
want = torch.empty((7, 300), dtype=torch.uint32)
murmur_hash32_kernel[(7, 1)](seed.to(torch.uint64), pos, cols, want, 7, 300, BLOCK_SIZE=512)
assert ours.dtype == torch.uint32 and torch.equal(ours, want), (ours[:2, :4], want[:2, :4])
print("ok")
"""


def test_seeded_sampling_hash_matches_sglang_triton_kernel():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
