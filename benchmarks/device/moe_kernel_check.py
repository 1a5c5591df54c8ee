"""Device check (issue 14 item 5): SGLang's Triton fused-MoE kernel, one layered pass vs chunk-512 passes.

At the MoE-layer shapes of Qwen3-30B-A3B (128 experts, top-8, hidden 2048, expert intermediate 768) and
GPT-OSS-20B (32 experts, top-4, hidden 2880, intermediate 2880; run in bf16, without its biases and clamped
SwiGLU: the real model stores its experts in MXFP4, 4.25 bits a weight) it compares, for L prompt rows and B
decode rows:
  * layered: one `fused_experts` call over L + B rows (a layer group's whole cohort);
  * chunked: ceil(L / 512) calls over 512 + B rows (the decode rows ride along with each chunk, the same rows);
and reports for each: time (CUDA events: warm-up, repeats, median; and the fused_moe_kernel share from torch's
profiler), DRAM bytes read by the fused_moe_kernel launches (Nsight Compute, dram__bytes_read.sum, caches
flushed before each launch), the byte model (distinct experts touched per call x bytes per expert, plus the
activation rows the two kernels read) and the HBM floor (model bytes / the H200 profile's bandwidth in
sgl_layered/core/hardware.py). Routing is random (near-uniform): an upper end for distinct experts per call.

    python benchmarks/device/moe_kernel_check.py --out results.json          # on a CUDA GPU (see run.sh)
    python benchmarks/device/moe_kernel_check.py --tiny                      # anywhere: tiny shapes; on CPU
                                                                             # under TRITON_INTERPRET=1
    python benchmarks/device/moe_kernel_check.py --tiny --as-cuda            # CPU: SGLang's CUDA code path, with
                                                                             # CUDA faked as an H200

SGLang is imported from its unpacked wheel (--sglang-src, default benchmarks/device/carry, made by
prepare.py), never installed. What the GPU machine lacks is stood in for, and every stand-in is printed and
recorded in the JSON:
  * third-party modules that SGLang's code imports, other than torch, triton, numpy, packaging, psutil,
    msgspec and dill: an optional import (inside try/except ImportError) is refused, any other gets an empty
    stand-in module (SGLangImportShim), installed or not, so the GPU machine imports SGLang as the bare
    rehearsal environment does; the fused-MoE path calls none of them;
  * sgl_kernel, when it cannot be imported: a stand-in module holding a torch `moe_sum_reduce` (the one name
    SGLang's fused MoE calls from it on CUDA); the other names SGLang's CUDA import chain takes from it are
    importable and fail when called;
  * SGLang's routing alignment (`moe_align_block_size`'s kernel), its CUDA activation (`silu_and_mul`) and
    the custom-op wrappers are used as they are where they run, else replaced (align, activation: torch; custom
    ops: their Python bodies, which is what they wrap).
The Triton kernel under test, `fused_moe_kernel` (both GEMMs), and its config selection are SGLang's own.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.abc
import importlib.machinery
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moe_align_torch import align_block_size_torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_SGLANG_SRC = HERE / "carry"
PKG = "sglang.srt.layers.moe.moe_runner.triton_utils"

MODELS = ("Qwen3-30B-A3B", "GPT-OSS-20B")
PROMPT_ROWS = (2048, 8192)
DECODE_ROWS = (32, 64)
CHUNK = 512
# Tiny shapes for the Triton interpreter: one Qwen3-like (many experts, top-k > 2) and one GPT-OSS-like
# (few experts, hidden == intermediate); a pinned config makes every row's arithmetic independent of its batch.
TINY_MODELS = {"tiny-qwen3-like": dict(experts=8, top_k=4, hidden=64, intermediate=32),
               "tiny-gpt-oss-like": dict(experts=4, top_k=2, hidden=64, intermediate=64)}
# Every call over 32 rows, as on the GPU (SGLang sums the top-k outputs another way at <= 32 rows).
TINY_PROMPT_ROWS, TINY_DECODE_ROWS, TINY_CHUNK = (64,), (3,), 32
PINNED_CONFIG = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1}
KERNEL = "fused_moe_kernel"
NCU_METRICS = ("dram__bytes_read.sum", "gpu__time_duration.sum")

# Imported for real when SGLang's code imports them: what the kernel runs on, msgspec (SGLang's runtime config,
# read by every fused-MoE call) and dill (SGLang serializes a class with it at import). Everything else outside
# the standard library is decided by SGLangImportShim, the same way on every machine.
REAL_MODULES = frozenset({"torch", "triton", "numpy", "packaging", "psutil", "msgspec", "dill", "typing_extensions",
                          "sglang", "sgl_kernel"})
_OPTIONAL_HANDLERS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def log(msg: str) -> None:
    print(msg, flush=True)


# -- importing SGLang from its unpacked wheel ------------------------------------------------------------------------
class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        if getattr(cls, "_stub_root", False) and len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]  # used as a decorator: leave the function alone
        return super().__call__(*args, **kwargs)

    def __getitem__(cls, key):
        return cls

    def __setitem__(cls, key, value):
        pass

    def __iter__(cls):
        return iter(())

    def __len__(cls):
        return 0

    def __contains__(cls, item):
        return False


class _Stub(metaclass=_StubMeta):
    """A stand-in object: accepts any construction, subclassing, attribute, call, iteration or context use."""

    def __init__(self, *args, **kwargs):
        pass

    def __init_subclass__(cls, **kwargs):
        cls._stub_root = False

    def __class_getitem__(cls, item):
        return cls

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(name)()

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return _stub_class("result")()

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __bool__(self):
        return False

    def __getitem__(self, key):
        return _stub_class("item")()

    def __setitem__(self, key, value):
        pass

    def __contains__(self, item):
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _stub_class(name: str) -> type:
    return _StubMeta(name.rsplit(".", 1)[-1], (_Stub,), {"_stub_root": True, "__qualname__": name})


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__version__ = "0+stand-in"
        module.__getattr__ = lambda name: _stub_class(f"{spec.name}.{name}") if not name.startswith("__") \
            else (_ for _ in ()).throw(AttributeError(name))
        return module

    def exec_module(self, module):
        pass


class SGLangImportShim(importlib.abc.MetaPathFinder):
    """Decides what SGLang's own imports of third-party modules get, whatever is installed, so that every machine
    imports SGLang as the bare rehearsal environment does (torch, triton, numpy, packaging, psutil, msgspec, dill):
      * an optional import (an import statement inside `try:` with an `except ImportError` / `Exception` /
        bare handler) gets ModuleNotFoundError: SGLang takes its not-installed branch;
      * any other import gets an empty stand-in module: SGLang's import chain reaches many packages (HF
        transformers, pydantic, zmq, ... through its utils, configs and server args) that the fused-MoE path
        never calls.
    Imports by anything other than SGLang's code are left alone. Both sets are recorded and printed."""

    def __init__(self, sglang_dir: Path):
        self.sglang_dir = str(sglang_dir.resolve()) + os.sep
        self.stubbed: set[str] = set()
        self.refused: set[str] = set()
        self._try_ranges: dict[str, list] = {}

    def _importer(self):
        """(filename, line) of the SGLang statement doing this import, or None."""
        frame, via_import = sys._getframe(2), False
        while frame is not None:
            code = frame.f_code
            via_import = via_import or code.co_name in ("_find_and_load", "import_module")
            filename = code.co_filename
            if not filename.startswith("<") and os.sep + "importlib" + os.sep not in filename:
                return (filename, frame.f_lineno) if via_import and filename.startswith(self.sglang_dir) else None
            frame = frame.f_back
        return None

    def _optional(self, filename: str, line: int) -> bool:
        ranges = self._try_ranges.get(filename)
        if ranges is None:
            import ast

            ranges = []
            for node in ast.walk(ast.parse(Path(filename).read_text(), filename)):
                if isinstance(node, ast.Try) and node.body and any(self._catches_import_error(h.type)
                                                                   for h in node.handlers):
                    ranges.append((node.body[0].lineno, node.body[-1].end_lineno))
            self._try_ranges[filename] = ranges
        return any(lo <= line <= hi for lo, hi in ranges)

    @staticmethod
    def _catches_import_error(handler_type) -> bool:
        import ast

        if handler_type is None:
            return True
        names = handler_type.elts if isinstance(handler_type, ast.Tuple) else [handler_type]
        return any(getattr(n, "id", getattr(n, "attr", None)) in _OPTIONAL_HANDLERS for n in names)

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top == "sgl_kernel" and name != top and getattr(sys.modules.get(top), "is_device_check_standin", False):
            import torch

            return importlib.machinery.ModuleSpec(name, _StandinSubmoduleLoader(torch), is_package=True)
        if top in REAL_MODULES or top in sys.stdlib_module_names:
            return None
        importer = self._importer()
        if importer is None:
            return None
        if self._optional(*importer):
            self.refused.add(top)
            raise ModuleNotFoundError(f"No module named {name!r} (device check: optional imports see no "
                                      "third-party package)", name=name)
        self.stubbed.add(top)
        return importlib.machinery.ModuleSpec(name, _StubLoader(), is_package=True)


class _Unavailable:
    """An sgl_kernel name SGLang imports but the device check does not provide: importable, fails when called."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{self.name} is not available (sgl_kernel is not installed)")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self.name}.{attr}")

    def __repr__(self):
        return f"<unavailable sgl_kernel.{self.name}>"


def sgl_kernel_standin(torch, name: str = "sgl_kernel", root=None) -> types.ModuleType:
    """sgl_kernel as the device check has it: a torch moe_sum_reduce (the one name SGLang's fused MoE calls from it
    on CUDA; imported at module level), and every other name SGLang imports from it (on CUDA its import chain
    imports dozens) importable but failing when called, recorded in `imported_names`."""
    module = types.ModuleType(name)
    module.__doc__ = "device-check stand-in for sgl_kernel"
    module.__path__ = []
    module.imported_names = set() if root is None else root.imported_names
    module.is_device_check_standin = True
    prefix = name.partition(".")[2]

    def moe_sum_reduce(x, out, routed_scaling_factor):
        out.copy_(torch.sum(x.float(), dim=1).mul_(routed_scaling_factor))

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        qualified = f"{prefix}.{attr}" if prefix else attr
        module.imported_names.add(qualified)
        return _Unavailable(qualified)

    if root is None:
        module.moe_sum_reduce = moe_sum_reduce
    module.__getattr__ = __getattr__
    return module


class _StandinSubmoduleLoader(importlib.abc.Loader):
    def __init__(self, torch):
        self.torch = torch

    def create_module(self, spec):
        return sgl_kernel_standin(self.torch, spec.name, root=sys.modules["sgl_kernel"])

    def exec_module(self, module):
        pass


def _silu_and_mul_torch(x, out, **_row_filter):
    """Every row (SGLang's CUDA kernel may skip rows of filtered experts; the down GEMM never reads them)."""
    import torch.nn.functional as F

    d = x.shape[-1] // 2
    out.copy_(F.silu(x[..., :d]) * x[..., d:])


@contextlib.contextmanager
def fake_h200(torch):
    """Make this CPU-only process look like an H200 machine to SGLang (its is_cuda() is torch.cuda.is_available()
    and torch.version.cuda; it reads the device's name and capability), so that SGLang's CUDA code paths are
    imported and run, on CPU tensors, with Triton's interpreter running the kernels: the rehearsal of the GPU run."""
    props = types.SimpleNamespace(name="NVIDIA H200", major=9, minor=0, total_memory=141 * 2**30,
                                  multi_processor_count=132, shared_memory_per_block_optin=232448,
                                  L2_cache_size=60 * 2**20, warp_size=32, gcnArchName="")
    fake = {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
            "get_device_name": lambda *a, **k: props.name, "get_device_capability": lambda *a, **k: (9, 0),
            "get_device_properties": lambda *a, **k: props}
    saved = {name: getattr(torch.cuda, name) for name in fake}
    saved_version = torch.version.cuda
    for name, fn in fake.items():
        setattr(torch.cuda, name, fn)
    torch.version.cuda = torch.version.cuda or "12.8"
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.cuda, name, fn)
        torch.version.cuda = saved_version


class SGLangMoE:
    """SGLang's fused_experts and what the run needs around it, with a record of every stand-in used."""

    def __init__(self, sglang_src: Path, device: str):
        import torch

        self.torch, self.device, self.report = torch, device, {"stand_ins": []}
        sglang_src = Path(sglang_src).resolve()
        if not (sglang_src / "sglang").is_dir():
            raise SystemExit(f"no sglang/ under {sglang_src}: run benchmarks/device/prepare.py first")
        if "sglang" in sys.modules:
            raise SystemExit("sglang was imported before the device check set up its import")
        sys.path.insert(0, str(sglang_src))
        self.shim = SGLangImportShim(sglang_src / "sglang")
        sys.meta_path.insert(0, self.shim)
        try:
            import sgl_kernel

            self._note("sgl_kernel", f"installed: {getattr(sgl_kernel, '__file__', '?')}", standin=False)
        except ImportError as e:
            sys.modules["sgl_kernel"] = sgl_kernel_standin(torch)
            self._note("sgl_kernel", f"absent ({e}); stand-in module: torch moe_sum_reduce, other names fail "
                       "when called")
        t0 = time.time()
        import sglang
        from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig
        from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe as fm
        from sglang.srt.layers.moe.moe_runner.triton_utils import (
            override_config,
            try_get_optimal_moe_config,
        )
        from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import (
            get_config_file_name,
        )
        from sglang.srt.layers.moe.topk import StandardTopKOutput

        self.report["sglang_import_s"] = round(time.time() - t0, 1)
        self.report["sglang_file"] = sglang.__file__
        self.report["sglang_version"] = getattr(sglang, "__version__", "?")
        self.report["stubbed_modules"] = sorted(self.shim.stubbed)
        self.report["refused_modules"] = sorted(self.shim.refused)
        log(f"[import] SGLang {self.report['sglang_version']} from {sglang.__file__} in "
            f"{self.report['sglang_import_s']} s; stand-in modules (import only): {', '.join(sorted(self.shim.stubbed))}")
        self.fm, self.MoeRunnerConfig, self.StandardTopKOutput = fm, MoeRunnerConfig, StandardTopKOutput
        self.override_config, self.try_get_optimal_moe_config = override_config, try_get_optimal_moe_config
        self.get_config_file_name = get_config_file_name
        self.mab = sys.modules[f"{PKG}.moe_align_block_size"]
        self.report["fused_moe_cuda_path"] = bool(fm._is_cuda)
        log(f"[sglang] fused MoE code path: {'CUDA' if fm._is_cuda else 'non-CUDA'}; tensors on {device}")
        self._publish()
        self._choose_align()
        self._choose_activation()
        self._choose_custom_ops()
        standin = sys.modules.get("sgl_kernel")
        if hasattr(standin, "imported_names"):
            self.report["sgl_kernel_unavailable_names"] = sorted(standin.imported_names)

    def _note(self, what: str, how: str, standin: bool = True) -> None:
        log(f"[stand-in] {what}: {how}" if standin else f"[sglang] {what}: {how}")
        self.report["stand_ins" if standin else "sglang_own"] = self.report.get(
            "stand_ins" if standin else "sglang_own", []) + [{"what": what, "how": how}]

    def _publish(self) -> None:
        """SGLang reads its runtime config (exec.moe.*, exec.deterministic.*) and the TP group in every call."""
        from sglang.srt.runtime_context import get_exec, get_parallel, publish
        from sglang.srt.server_args import ServerArgs

        # model_path "dummy": SGLang's resolution stops before anything model-specific (no HF config is read).
        device = "cuda" if self.fm._is_cuda else "cpu"
        args = ServerArgs(model_path="dummy", device=device)
        publish(args, role="scheduler")
        get_parallel().override_permanently(tp_group=None)
        self.report["runtime_config"] = {
            "published": f"ServerArgs(model_path='dummy', device={device!r}), resolved by SGLang's publish",
            "exec.moe.enable_fused_moe_sum_all_reduce": bool(get_exec().moe.enable_fused_moe_sum_all_reduce),
            "exec.deterministic.enable_deterministic_inference":
                bool(get_exec().deterministic.enable_deterministic_inference),
            "tp_group": None}

    def _choose_align(self) -> None:
        torch, mab = self.torch, self.mab
        own = getattr(mab, "sgl_moe_align_block_size", None)
        if own is None:
            mab.sgl_moe_align_block_size = align_block_size_torch
            self._note("moe_align_block_size kernel", "SGLang binds none on this platform; pure torch")
            return
        ids = torch.randint(0, 8, (37, 2), device=self.device, dtype=torch.int32)
        try:
            got = self._run_align(own, ids)
            want = self._run_align(align_block_size_torch, ids)
            same = all(torch.equal(a, b) for a, b in zip(got[1:], want[1:])) and self._same_buckets(got, want, 16)
            if not same:
                raise RuntimeError("its result differs from the torch reference")
            self._note("moe_align_block_size kernel", f"SGLang's own ({getattr(own, '__module__', '?')})",
                       standin=False)
        except Exception as e:
            mab.sgl_moe_align_block_size = align_block_size_torch
            self._note("moe_align_block_size kernel", f"SGLang's own failed ({type(e).__name__}: {e}); pure torch")

    def _run_align(self, fn, ids, block_size=16, buckets=9):
        torch, dev = self.torch, self.device
        numel = ids.numel()
        sorted_ids = torch.empty(numel + buckets * (block_size - 1) + 3, dtype=torch.int32, device=dev)
        expert_ids = torch.empty(math.ceil(sorted_ids.numel() / block_size), dtype=torch.int32, device=dev)
        post = torch.empty(1, dtype=torch.int32, device=dev)
        cumsum = torch.empty(buckets + 2, dtype=torch.int32, device=dev)
        fn(ids, buckets, block_size, sorted_ids, expert_ids, post, cumsum, True)
        n = int(post[0])
        return sorted_ids[:n].cpu(), expert_ids[: n // block_size].cpu(), post.cpu()

    @staticmethod
    def _same_buckets(got, want, block_size) -> bool:
        """Slots of each block as a set (a kernel may order slots inside an expert differently)."""
        a, b = got[0].view(-1, block_size), want[0].view(-1, block_size)
        return all(set(x.tolist()) == set(y.tolist()) for x, y in zip(a, b))

    def _choose_activation(self) -> None:
        fm, torch = self.fm, self.torch
        own = getattr(fm, "silu_and_mul", None)
        if own is None or not fm._is_cuda:
            self._note("silu_and_mul", "SGLang's non-CUDA path computes it in torch", standin=False)
            return
        if "tvm_ffi" in self.shim.stubbed:
            fm.silu_and_mul = _silu_and_mul_torch
            self._note("silu_and_mul", "SGLang's CUDA one is a JIT kernel loaded through tvm_ffi, a stand-in here "
                       "(not built); torch, all rows")
            return
        x = torch.randn(4, 64, device=self.device, dtype=torch.bfloat16)
        out = torch.full((4, 32), float("nan"), device=self.device, dtype=torch.bfloat16)
        want = torch.empty_like(out)
        _silu_and_mul_torch(x, want)
        try:
            own(x, out, expert_ids=torch.zeros(4, dtype=torch.int32, device=self.device), expert_step=1)
            if not torch.allclose(out.float(), want.float(), atol=2e-2, rtol=2e-2):
                raise RuntimeError("its result differs from torch's")
            self._note("silu_and_mul", f"SGLang's own ({getattr(own, '__module__', '?')})", standin=False)
        except Exception as e:
            fm.silu_and_mul = _silu_and_mul_torch
            self._note("silu_and_mul", f"SGLang's own failed ({type(e).__name__}: {str(e)[:200]}); torch, all rows")

    def _choose_custom_ops(self) -> None:
        fm = self.fm
        if self.device == "cpu":
            fm.inplace_fused_experts = fm.inplace_fused_experts.__wrapped__
            fm.outplace_fused_experts = fm.outplace_fused_experts.__wrapped__
            self._note("fused_experts custom ops", "registered for CUDA tensors only; their Python bodies here")
        else:
            self._note("fused_experts custom ops", "SGLang's torch custom ops", standin=False)

    def call(self, x, w1, w2, weights, ids, logits, top_k):
        cfg = self.MoeRunnerConfig(num_experts=w1.shape[0], num_local_experts=w1.shape[0], top_k=top_k,
                                   inplace=False)
        return self.fm.fused_experts(x, w1, w2, self.StandardTopKOutput(weights, ids, logits), cfg)

    def configs(self, E, H, I, top_k, M):
        w1_shape, w2_shape = (E, 2 * I, H), (E, H, I)
        up, (down, _) = self.try_get_optimal_moe_config(w1_shape, w2_shape, top_k, None, M, return_down_config=True)
        return {"up": dict(up), "down": dict(down) if down else None}

    def config_file(self, E, I):
        import triton

        name = self.get_config_file_name(E, I, None)
        base = Path(self.fm.__file__).parent / "configs"
        here = base / f"triton_{triton.__version__.replace('.', '_')}" / name
        found = here if here.exists() else next(iter(sorted(base.glob(f"triton_*/{name}"), reverse=True)), None)
        return {"name": name, "triton": triton.__version__,
                "used": str(found.relative_to(base)) if found else None,
                "note": "exact Triton version" if found == here else
                ("another Triton version's file (SGLang falls back to it)" if found else
                 "none: SGLang's default config")}


# -- the cases -----------------------------------------------------------------------------------------------------
def model_shapes(tiny: bool) -> dict:
    if tiny:
        return {name: dict(s, elt_bytes=4, dtype="float32") for name, s in TINY_MODELS.items()}
    sys.path.insert(0, str(REPO))
    from sgl_layered.core.shapes import MODELS as SHAPES

    return {name: dict(experts=SHAPES[name].experts, top_k=SHAPES[name].top_k, hidden=SHAPES[name].hidden,
                       intermediate=SHAPES[name].expert_intermediate, elt_bytes=2, dtype="bfloat16")
            for name in MODELS}


def hbm_profiles() -> dict:
    sys.path.insert(0, str(REPO))
    from sgl_layered.core.hardware import H200, H200_MEASURED

    return {"peak": {"name": H200.name, "mem_bw": H200.mem_bw, "flops": H200.flops, "source": H200.source},
            "measured": {"name": H200_MEASURED.name, "mem_bw": H200_MEASURED.mem_bw,
                         "flops": H200_MEASURED.flops, "source": H200_MEASURED.source}}


class Case:
    """One model, L prompt rows, B decode rows: the layered call's inputs and the chunked calls' slices."""

    def __init__(self, torch, shape: dict, L: int, B: int, C: int, device: str, seed: int):
        self.shape, self.L, self.B, self.C = shape, L, B, C
        E, K, H = shape["experts"], shape["top_k"], shape["hidden"]
        dtype = getattr(torch, shape["dtype"])
        g = torch.Generator(device="cpu").manual_seed(seed)
        rows = L + B
        # prompt rows first, decode rows last (as a mixed batch lays them out)
        self.x = (torch.randn(rows, H, generator=g) * 0.5).to(device=device, dtype=dtype)
        self.logits = torch.randn(rows, E, generator=g).to(device)
        w, ids = torch.topk(torch.softmax(self.logits, dim=-1), K, dim=-1)
        self.weights, self.ids = (w / w.sum(-1, keepdim=True)).float(), ids.to(torch.int32)
        n = math.ceil(L / C)
        self.chunks = []
        for i in range(n):
            sel = torch.cat([torch.arange(i * C, min(L, (i + 1) * C)), torch.arange(L, rows)]).to(device)
            self.chunks.append((self.x[sel].contiguous(), self.weights[sel].contiguous(), self.ids[sel].contiguous(),
                                self.logits[sel].contiguous()))

    def layered_args(self):
        return self.x, self.weights, self.ids, self.logits

    def calls(self, mode: str):
        return [self.layered_args()] if mode == "layered" else self.chunks


def make_weights(torch, shape: dict, device: str, seed: int):
    E, H, I = shape["experts"], shape["hidden"], shape["intermediate"]
    dtype = getattr(torch, shape["dtype"])
    g = torch.Generator(device=device).manual_seed(seed)
    w1 = torch.randn(E, 2 * I, H, device=device, dtype=dtype, generator=g) * (1.0 / math.sqrt(H))
    w2 = torch.randn(E, H, I, device=device, dtype=dtype, generator=g) * (1.0 / math.sqrt(I))
    return w1, w2


def byte_model(shape: dict, ids) -> dict:
    """Bytes the two fused_moe_kernel launches of one call must read from DRAM at least: each distinct expert's
    weights once (gate-up 2*I*H, down H*I), the hidden rows once (gate-up), the activated rows once (down: one
    I-wide row per routed slot) and the routing weights (down)."""
    E, K, H, I, elt = (shape[k] for k in ("experts", "top_k", "hidden", "intermediate", "elt_bytes"))
    rows = ids.shape[0]
    distinct = int(ids.unique().numel())
    weights = distinct * 3 * H * I * elt
    acts = rows * H * elt + rows * K * I * elt + rows * K * 4
    return {"rows": rows, "distinct_experts": distinct, "expert_bytes": weights, "activation_bytes": acts,
            "model_bytes": weights + acts, "flops": 2 * rows * K * 3 * H * I}


def reference(torch, x, w1, w2, weights, ids):
    """fp32 torch MoE (gate = first half of w1's rows, as SGLang's silu_and_mul), expert by expert."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    xf, I = x.float(), w2.shape[2]
    for e in ids.unique().tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        h = xf[tok] @ w1[e].float().t()
        a = torch.nn.functional.silu(h[:, :I]) * h[:, I:]
        out.index_add_(0, tok, (a @ w2[e].float().t()) * weights[tok, slot, None])
    return out


def check_outputs(moe: SGLangMoE, case: Case, w1, w2, pinned: bool) -> dict:
    """The chunked calls' rows against the layered call's (prompt rows, and the decode rows of every chunk), and
    the layered call against the fp32 reference on (a sample of) its rows."""
    torch = moe.torch
    ctx = moe.override_config(dict(PINNED_CONFIG)) if pinned else contextlib.nullcontext()
    K = case.shape["top_k"]
    with ctx:
        layered = moe.call(*case.layered_args()[:1], w1, w2, *case.layered_args()[1:], top_k=K)
        chunk_outs = [moe.call(c[0], w1, w2, c[1], c[2], c[3], top_k=K) for c in case.chunks]
    L, B = case.L, case.B
    prompt = torch.cat([o[: o.shape[0] - B] for o in chunk_outs])
    diffs = [(prompt.float() - layered[:L].float()).abs().max().item()]
    diffs += [(o[o.shape[0] - B:].float() - layered[L:].float()).abs().max().item() for o in chunk_outs]
    sample = torch.cat([torch.arange(0, min(L, 64)), torch.arange(L, L + B)]).to(layered.device)
    ref = reference(torch, case.x[sample], w1, w2, case.weights[sample], case.ids[sample])
    scale = ref.abs().max().item()
    return {"chunked_vs_layered_max_abs": max(diffs), "chunked_equal_layered": max(diffs) == 0.0,
            "reference_rows": int(sample.numel()),
            "reference_max_abs": (layered[sample].float() - ref).abs().max().item(), "reference_scale": scale,
            "pinned_config": pinned}


# -- timing (CUDA) -------------------------------------------------------------------------------------------------
def time_calls(moe: SGLangMoE, calls, w1, w2, top_k: int, warmup: int, repeats: int) -> dict:
    torch = moe.torch

    def run():
        for x, w, ids, lg in calls:
            moe.call(x, w1, w2, w, ids, lg, top_k=top_k)

    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    result = {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
              "repeats": repeats, "warmup": warmup}
    try:  # the fused_moe_kernel share of one pass, from torch's profiler (CUPTI)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        kern, other = 0.0, 0.0
        for ev in prof.key_averages():
            if "CUDA" not in str(getattr(ev, "device_type", "")):
                continue  # host-side ops (their device time is their kernels', counted below)
            t = getattr(ev, "self_device_time_total", None)
            t = getattr(ev, "self_cuda_time_total", 0.0) if t is None else t
            if ev.key == KERNEL:
                kern += t
            else:
                other += t
        result["fused_moe_kernel_ms"] = kern / 1e3
        result["other_device_ms"] = other / 1e3
    except Exception as e:
        result["profiler_error"] = f"{type(e).__name__}: {e}"
    return result


# -- Nsight Compute --------------------------------------------------------------------------------------------------
def find_ncu():
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in ("/opt/nvidia/nsight-compute/*/ncu", "/usr/local/cuda*/bin/ncu", "/usr/local/cuda*/nsight-compute*/ncu"):
        hits = sorted(Path("/").glob(pattern.lstrip("/")), reverse=True)
        if hits:
            return str(hits[0])
    return None


def parse_ncu_csv(text: str) -> list[dict]:
    """ncu --csv --print-units base (details page): one line per (launch, metric) -> one dict per launch."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    launches: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        if row.get("Kernel Name") is None or row.get("Metric Name") is None:
            continue
        rec = launches.setdefault(row["ID"], {"id": int(row["ID"]), "kernel": row["Kernel Name"]})
        value = row.get("Metric Value", "").replace(",", "")
        try:
            rec[row["Metric Name"]] = float(value)
        except ValueError:
            rec[row["Metric Name"]] = value
        rec[row["Metric Name"] + ".unit"] = row.get("Metric Unit", "")
    return sorted(launches.values(), key=lambda r: r["id"])


_UNITS = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "kibyte": 2**10, "mibyte": 2**20, "gibyte": 2**30,
          "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1}


def _in_base(launch: dict, metric: str) -> float:
    """A launch's metric in bytes or seconds (ncu is asked for base units; scaled ones are converted)."""
    value = launch.get(metric)
    if not isinstance(value, float):
        raise ValueError(f"ncu gave no number for {metric} in launch {launch.get('id')}: {value!r}")
    unit = launch.get(metric + ".unit", "").lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown ncu unit {unit!r} for {metric}")
    return value * _UNITS[unit]


def ncu_model(args, model: str, plan: list, deadline: float) -> dict:
    ncu = find_ncu()
    if ncu is None:
        return {"error": "ncu not found"}
    launches = 2 * sum(p["calls"] for p in plan)
    out_dir = Path(args.out).parent if args.out else Path(".")
    log_file = out_dir / f"ncu_{model}.csv"
    cmd = [ncu, "--target-processes", "all", "--kernel-name", KERNEL, "--launch-count", str(launches),
           "--metrics", ",".join(NCU_METRICS), "--csv", "--print-units", "base", "--clock-control", "none",
           "--cache-control", "all", "--log-file", str(log_file),
           sys.executable, str(Path(__file__).resolve()), "--ncu-child", model, "--sglang-src", str(args.sglang_src)]
    timeout = max(10.0, deadline - time.time())
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"ncu ran past {timeout:.0f} s", "cmd": " ".join(cmd)}
    wall = time.time() - t0
    text = log_file.read_text() if log_file.exists() else ""
    rows = parse_ncu_csv(text) or parse_ncu_csv(proc.stdout)
    result = {"cmd": " ".join(cmd), "wall_s": round(wall, 1), "rc": proc.returncode, "launches": len(rows),
              "expected_launches": launches}
    if len(rows) != launches:  # a non-zero exit after every launch was profiled still leaves usable counts
        result["error"] = f"expected {launches} {KERNEL} launches, ncu reported {len(rows)} (exit {proc.returncode})"
        result["tail"] = (proc.stdout + proc.stderr)[-3000:] + "\n" + text[-2000:]
        return result
    per_case, i = {}, 0
    for p in plan:
        take = rows[i: i + 2 * p["calls"]]
        i += 2 * p["calls"]
        per_case[p["key"]] = {"dram_bytes_read": sum(_in_base(r, "dram__bytes_read.sum") for r in take),
                              "kernel_ms": sum(_in_base(r, "gpu__time_duration.sum") for r in take) * 1e3,
                              "launches": len(take)}
    result["cases"] = per_case
    return result


def plan_for(model: str, tiny: bool) -> list:
    prompt_rows, decode_rows, chunk = (TINY_PROMPT_ROWS, TINY_DECODE_ROWS, TINY_CHUNK) if tiny else \
        (PROMPT_ROWS, DECODE_ROWS, CHUNK)
    plan = []
    for L in prompt_rows:
        for B in decode_rows:
            for mode in ("layered", "chunked"):
                plan.append({"key": f"{model}|L={L}|B={B}|{mode}", "model": model, "L": L, "B": B, "C": chunk,
                             "mode": mode, "calls": 1 if mode == "layered" else math.ceil(L / chunk)})
    return plan


def ncu_child(args) -> None:
    """Under ncu: each case's calls once, in plan order (each call launches fused_moe_kernel twice)."""
    import torch

    moe = SGLangMoE(args.sglang_src, "cuda")
    shapes = model_shapes(False)
    shape = shapes[args.ncu_child]
    w1, w2 = make_weights(torch, shape, "cuda", seed=1)
    for i, p in enumerate(plan_for(args.ncu_child, False)):
        case = Case(torch, shape, p["L"], p["B"], p["C"], "cuda", seed=100 + i // 2)
        for x, w, ids, lg in case.calls(p["mode"]):
            moe.call(x, w1, w2, w, ids, lg, top_k=shape["top_k"])
        torch.cuda.synchronize()


# -- main ----------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sglang-src", type=Path, default=DEFAULT_SGLANG_SRC,
                    help="folder holding the unpacked sglang/ package (prepare.py)")
    ap.add_argument("--out", default=None, help="JSON report (default: print only)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes; on CPU under TRITON_INTERPRET=1")
    ap.add_argument("--as-cuda", action="store_true",
                    help="with --tiny on a CPU: run SGLang's CUDA code path (CUDA faked as an H200, CPU tensors)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-ncu", action="store_true")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="stop starting new work after this (s)")
    ap.add_argument("--list-modules", default=None, help="append the SGLang source files imported to this file")
    ap.add_argument("--ncu-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.deadline_s
    if args.ncu_child:
        ncu_child(args)
        return
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        log("skipped: no CUDA device here; run with --tiny to rehearse under the Triton interpreter")
        return
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("on CPU this check runs under Triton's interpreter: set TRITON_INTERPRET=1")
    if args.as_cuda and (cuda or not args.tiny):
        raise SystemExit("--as-cuda rehearses the GPU path on a CPU-only machine, with --tiny")
    device = "cuda" if cuda else "cpu"
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)",
              "torch": torch.__version__, "python": sys.version.split()[0], "tiny": args.tiny,
              "as_cuda": args.as_cuda}
    try:
        import triton

        report["triton"] = triton.__version__
        with fake_h200(torch) if args.as_cuda else contextlib.nullcontext():
            moe = SGLangMoE(args.sglang_src, device)
            report.update(moe.report)
            report["hbm"] = hbm_profiles()
            if args.as_cuda:
                report["gpu_configs"] = gpu_configs(moe)
                report["rehearsal_only"] = rehearsal_without_pdl()
            run_cases(args, moe, report, device, deadline)
        report["ok"] = not report["errors"] and bool(report["cases"]) and all(
            c["check"].get("ok", True) for c in report["cases"])
    except BaseException as e:
        report["error"] = f"{type(e).__name__}: {e}"
        report["ok"] = False
        raise
    finally:
        report["wall_s"] = round(time.time() - start, 1)
        if args.list_modules:
            root = str(Path(args.sglang_src).resolve()) + os.sep
            files = sorted({m.__file__[len(root):] for m in list(sys.modules.values())
                            if (getattr(m, "__file__", None) or "").startswith(root)})
            with open(args.list_modules, "a") as f:
                f.write("\n".join(files) + "\n")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
            log(f"[report] {args.out}")
    if not report.get("ok"):
        raise SystemExit(1)


def rehearsal_without_pdl() -> str:
    """On Hopper SGLang launches its MoE kernels with programmatic dependent launch (a gdc_wait in the kernel),
    which Triton's interpreter cannot run: the rehearsal alone turns it off."""
    for name in ("sglang.kernels.ops.moe.fused_moe_triton_kernels", f"{PKG}.fused_moe"):
        sys.modules[name].is_arch_support_pdl = lambda: False
    note = "programmatic dependent launch off (SGLang uses it on Hopper; the interpreter cannot run gdc_wait)"
    log(f"[rehearsal] {note}")
    return note


def gpu_configs(moe: SGLangMoE) -> dict:
    """With CUDA faked as an H200: the config file and kernel configs SGLang chooses at the GPU run's shapes."""
    out = {}
    rows = sorted({L + B for L in PROMPT_ROWS for B in DECODE_ROWS} | {CHUNK + B for B in DECODE_ROWS})
    for model, shape in model_shapes(False).items():
        E, K, H, I = (shape[k] for k in ("experts", "top_k", "hidden", "intermediate"))
        out[model] = {"file": moe.config_file(E, I), "by_rows": {M: moe.configs(E, H, I, K, M) for M in rows}}
        log(f"[configs] {model} on an H200: config file {out[model]['file']['used'] or out[model]['file']['note']}; "
            f"up-projection config by rows: { {M: v['up'] for M, v in out[model]['by_rows'].items()} }")
    return out


def run_cases(args, moe: SGLangMoE, report: dict, device: str, deadline: float) -> None:
    torch, tiny = moe.torch, args.tiny
    shapes = model_shapes(tiny)
    report["shapes"] = shapes
    report["notes"] = ["GPT-OSS-20B runs in bf16 (its checkpoint stores experts in MXFP4, 4.25 bits a weight), "
                       "without its expert biases and clamped SwiGLU", "routing: random logits, softmax top-k "
                       "(near-uniform)", "the decode rows are the same rows in every chunk call",
                       "timed calls run back to back on one layer's weights: L2 (60 MB) can keep at most a few "
                       "% of a layer's experts between calls"]
    report["cases"], report["errors"] = [], []
    for model, shape in shapes.items():
        try:
            run_model(args, moe, report, model, shape, device, deadline)
        except Exception as e:
            import traceback

            report["errors"].append({"model": model, "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc()[-4000:]})
            log(f"[error] {model}: {type(e).__name__}: {e}")
        if device == "cuda":
            torch.cuda.empty_cache()
    if tiny or args.no_ncu:
        report["ncu"] = {"skipped": "tiny run" if tiny else "--no-ncu"}
        summarize(report)
        return
    report["ncu"] = {}
    for model in shapes:
        if time.time() > deadline - 30:
            report["ncu"][model] = {"skipped": "deadline"}
            continue
        res = ncu_model(args, model, plan_for(model, False), deadline)
        report["ncu"][model] = {k: v for k, v in res.items() if k != "cases"}
        log(f"[ncu] {model}: {json.dumps(report['ncu'][model])[:600]}")
        for row in report["cases"]:
            got = res.get("cases", {}).get(row["key"])
            if got:
                row["ncu"] = got
                row["ncu"]["measured_over_model"] = got["dram_bytes_read"] / row["model_bytes"]
                row["ncu"]["measured_over_expert_model"] = got["dram_bytes_read"] / row["expert_bytes"]
                log(f"[ncu] {row['key']}: DRAM read {got['dram_bytes_read'] / 1e9:.3f} GB "
                    f"(model {row['model_bytes'] / 1e9:.3f} GB, x{row['ncu']['measured_over_model']:.2f}), "
                    f"kernel time {got['kernel_ms']:.3f} ms (HBM floor {row['hbm_floor_ms']:.3f} ms)")
    summarize(report)


def run_model(args, moe: SGLangMoE, report: dict, model: str, shape: dict, device: str, deadline: float) -> None:
    """One model's cases: outputs checked, byte model and floors, and (GPU) times."""
    torch, tiny, hbm = moe.torch, args.tiny, report["hbm"]
    E, K, H, I = shape["experts"], shape["top_k"], shape["hidden"], shape["intermediate"]
    if not tiny:
        report.setdefault("config_files", {})[model] = moe.config_file(E, I)
    w1, w2 = make_weights(torch, shape, device, seed=1)
    plan = plan_for(model, tiny)
    for i in range(0, len(plan), 2):
        p = plan[i]
        case = Case(torch, shape, p["L"], p["B"], p["C"], device, seed=100 + i // 2)
        t0 = time.time()
        check = check_outputs(moe, case, w1, w2, pinned=tiny)
        check["wall_s"] = round(time.time() - t0, 2)
        # fp32 inputs run the kernel's fp16 compute type (SGLang: bf16 if bf16 else fp16); bf16 on the GPU
        tol = 5e-3 if tiny else 2e-2
        check["ok"] = check["reference_max_abs"] <= tol * max(1.0, check["reference_scale"]) and (
            check["chunked_equal_layered"] or not tiny)
        for mode in ("layered", "chunked"):
            calls = case.calls(mode)
            models = [byte_model(shape, c[2]) for c in calls]
            row = {"key": f"{model}|L={p['L']}|B={p['B']}|{mode}", "model": model, "L": p["L"], "B": p["B"],
                   "C": p["C"], "mode": mode, "calls": len(calls),
                   "rows_per_call": [m["rows"] for m in models],
                   "distinct_experts_per_call": [m["distinct_experts"] for m in models],
                   "model_bytes": sum(m["model_bytes"] for m in models),
                   "expert_bytes": sum(m["expert_bytes"] for m in models),
                   "flops": sum(m["flops"] for m in models), "check": check}
            row["hbm_floor_ms"] = row["model_bytes"] / hbm["peak"]["mem_bw"] * 1e3
            row["hbm_floor_measured_ms"] = row["model_bytes"] / hbm["measured"]["mem_bw"] * 1e3
            row["flop_floor_ms"] = row["flops"] / hbm["peak"]["flops"] * 1e3
            if not tiny:
                row["configs"] = [moe.configs(E, H, I, K, m["rows"]) for m in models[:2]]
                if time.time() < deadline:
                    row["time"] = time_calls(moe, calls, w1, w2, K, args.warmup, args.repeats)
                    row["achieved_GBps"] = row["model_bytes"] / (row["time"]["median_ms"] / 1e3) / 1e9
                else:
                    row["time"] = {"skipped": "deadline"}
            report["cases"].append(row)
            t = row.get("time", {})
            log(f"[case] {row['key']}: calls {row['calls']}, distinct experts/call "
                f"{_summary(row['distinct_experts_per_call'])}, model {row['model_bytes'] / 1e9:.3f} GB, "
                f"HBM floor {row['hbm_floor_ms']:.3f} ms"
                + (f", time {t['median_ms']:.3f} ms (kernel {t.get('fused_moe_kernel_ms', float('nan')):.3f})"
                   if "median_ms" in t else "")
                + f"; check ({check['wall_s']} s) ref {check['reference_max_abs']:.2e} of "
                  f"{check['reference_scale']:.2e}, chunked-vs-layered "
                  f"{check['chunked_vs_layered_max_abs']:.2e} -> {'ok' if check['ok'] else 'FAIL'}")


def _summary(values):
    return f"{min(values)}-{max(values)}" if len(set(values)) > 1 else str(values[0])


def summarize(report: dict) -> None:
    """Chunked over layered, per model, L and B: time, DRAM bytes (ncu) and model bytes."""
    by_key = {r["key"]: r for r in report["cases"]}
    out = []
    for r in report["cases"]:
        if r["mode"] != "layered":
            continue
        c = by_key.get(r["key"].replace("|layered", "|chunked"))
        if c is None:
            continue
        s = {"model": r["model"], "L": r["L"], "B": r["B"], "model_bytes_ratio": c["model_bytes"] / r["model_bytes"],
             "expert_bytes_ratio": c["expert_bytes"] / r["expert_bytes"]}
        rt, ct = r.get("time", {}), c.get("time", {})
        if "median_ms" in rt and "median_ms" in ct:
            s["time_ratio"] = ct["median_ms"] / rt["median_ms"]
        if rt.get("fused_moe_kernel_ms") and ct.get("fused_moe_kernel_ms"):
            s["profiled_kernel_time_ratio"] = ct["fused_moe_kernel_ms"] / rt["fused_moe_kernel_ms"]
        if "ncu" in r and "ncu" in c:
            s["dram_bytes_ratio"] = c["ncu"]["dram_bytes_read"] / r["ncu"]["dram_bytes_read"]
            s["kernel_time_ratio"] = c["ncu"]["kernel_ms"] / r["ncu"]["kernel_ms"]
        out.append(s)
        log(f"[summary] {json.dumps(s)}")
    report["summary_chunked_over_layered"] = out


if __name__ == "__main__":
    main()
