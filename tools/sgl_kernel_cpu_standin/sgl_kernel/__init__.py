"""CPU stand-in for `sgl_kernel` (sgl-layered development environments only).

SGLang's CPU engine imports a handful of bookkeeping ops from sgl_kernel, but no CPU build of sgl-kernel
is published and the CUDA build needs libcuda. Without Intel AMX, SGLang runs norms, linear layers,
attention and MoE in plain torch, so these ops are all it needs. Each is written here in plain torch with
the semantics of SGLang's Triton/GPU version of the same op. Any other name raises ImportError naming
this stand-in, so a code path that needs a real kernel fails loudly instead of running something else.
"""

from __future__ import annotations

import ctypes

import torch

IS_CPU_STANDIN = True
__version__ = "0.0.1+cpu.standin"


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc,
                                 pool_len):
    """req_to_token[req_pool_indices[i], start[i]:end[i]] = the i-th run of out_cache_loc (runs back to back)."""
    del pool_len  # the row length is req_to_token.shape[1]; kept for the kernel's signature
    starts, ends, rows = start_offset.tolist(), end_offset.tolist(), req_pool_indices.tolist()
    offset = 0
    for row, s, e in zip(rows, starts, ends):
        n = e - s
        if n > 0:
            req_to_token[row, s:e] = out_cache_loc[offset:offset + n].to(req_to_token.dtype)
        offset += n


def copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc):
    """For every KV buffer (raw base pointer, row stride in bytes) copy row src_loc[j] onto tgt_loc[j]."""
    pairs = list(zip(src_loc.tolist(), tgt_loc.tolist()))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        rows = [ctypes.string_at(base + s * stride, stride) for s, _ in pairs]  # read all first: in-place safe
        for (_, t), row in zip(pairs, rows):
            ctypes.memmove(base + t * stride, row, stride)


_MASK32 = 0xFFFFFFFF


def _rotl32(x, r):
    return ((x << r) | (x >> (32 - r))) & _MASK32


def _murmur3_mix(h, k):
    k = _rotl32((k * 0xCC9E2D51) & _MASK32, 15)
    h = _rotl32(h ^ ((k * 0x1B873593) & _MASK32), 13)
    return (h * 5 + 0xE6546B64) & _MASK32


def murmur_hash32_cpu(seed, positions, col_indices):
    """MurmurHash3 (32-bit) of (seed low word, seed high word, position, column), per row and column: the values
    SGLang's Triton kernel computes for seeded sampling (--enable-deterministic-inference). int64 arithmetic,
    every product masked to its low 32 bits (exact: the low bits of a product do not depend on the high ones)."""
    seed = seed.to(torch.int64).view(-1, 1)
    h = torch.zeros_like(seed)
    h = _murmur3_mix(h, seed & _MASK32)
    h = _murmur3_mix(h, (seed >> 32) & _MASK32)
    h = _murmur3_mix(h, positions.to(torch.int64).view(-1, 1) & _MASK32)
    h = _murmur3_mix(h, col_indices.to(torch.int64).view(1, -1) & _MASK32)
    h = h ^ 16
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & _MASK32
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & _MASK32
    return (h ^ (h >> 16)).to(torch.uint32)


# SGLang calls it as torch.ops.sgl_kernel.murmur_hash32_cpu from a torch.compile'd sampler: a registered op with
# a shape-only (fake) implementation for the compiler.
_LIB = torch.library.Library("sgl_kernel", "FRAGMENT")
_LIB.define("murmur_hash32_cpu(Tensor seed, Tensor positions, Tensor col_indices) -> Tensor")
_LIB.impl("murmur_hash32_cpu", murmur_hash32_cpu, "CPU")


@torch.library.register_fake("sgl_kernel::murmur_hash32_cpu")
def _murmur_hash32_cpu_shape(seed, positions, col_indices):
    return seed.new_empty((seed.shape[0], col_indices.shape[0]), dtype=torch.uint32)


def _not_in_standin(name: str):
    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} was called, but the sgl-kernel CPU stand-in (sgl-layered CPU dev environment) "
            "does not implement it; this code path needs the real sgl-kernel on a GPU machine."
        )

    unavailable.__name__ = name
    return unavailable


# Names SGLang's CPU engine imports at module load but never calls on a CPU without AMX (speculative
# decoding trees, AMX-only kernels). They exist so imports succeed; calling one raises NotImplementedError.
IMPORTED_NOT_CALLED = (
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
    "fill_bonus_tokens_cpu",
    "fill_accept_out_cache_loc_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
)
for _name in IMPORTED_NOT_CALLED:
    globals()[_name] = _not_in_standin(_name)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"sgl_kernel.{name} is not provided by the sgl-kernel CPU stand-in (sgl-layered CPU dev environment). "
        "This code path needs the real sgl-kernel on a GPU machine."
    )


# Other torch.ops.sgl_kernel.* CPU kernels are only used by SGLang when Intel AMX is available; the namespace
# exists, so a lookup of one produces torch's own clear "no such op" error.
