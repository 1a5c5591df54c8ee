"""Open-loop load with SGLang's own streaming client (sglang.benchmark.serving.async_request_sglang_generate).

Why not `python -m sglang.benchmark.serving` itself: its offline datasets cannot express our workloads exactly
(`random-ids` draws lengths uniformly from one range; `custom` takes text whose token count depends on
re-tokenization). So prompts are exact token-id lists from our length distributions, arrivals a seeded Poisson
schedule that is identical for every mode, and each request goes through SGLang's own request function, which
measures TTFT, every inter-token gap and E2E the same way the CLI does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from typing import List, Optional

from sgl_layered.analysis.latency import RequestRecord


def _client_args():
    from sglang.benchmark import serving

    serving.set_global_args(argparse.Namespace(
        temperature=0.0, top_p=1.0, disable_ignore_eos=False, disable_stream=False, return_logprob=False,
        return_routed_experts=False, logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None,
        cache_report=True))
    return serving


def make_prompts(lengths: List[tuple], vocab: int, seed: int) -> List[list]:
    """Random token ids (below the tokenizer's chat markers) per (prompt_len, output_len)."""
    rng = random.Random(seed)
    return [[rng.randrange(0, vocab - 3) for _ in range(p)] for p, _ in lengths]


def text_prompts(lengths: List[tuple], stream: List[int], seed: int) -> List[list]:
    """Per (prompt_len, output_len): a window of `stream` (real text's token ids) at a seeded offset; a prompt
    longer than the stream reads it round and round."""
    if not stream:
        raise ValueError("text_prompts needs a non-empty token stream")
    rng = random.Random(seed)
    out = []
    for p, _ in lengths:
        start = rng.randrange(len(stream))
        out.append([stream[(start + i) % len(stream)] for i in range(p)])
    return out


async def _run(url: str, prompts: List[list], lengths: List[tuple], arrivals: List[float], max_concurrency: int,
               progress=None) -> tuple:
    serving = _client_args()
    gate = asyncio.Semaphore(max_concurrency)
    start = time.perf_counter()

    async def one(ids, out_len, at):
        delay = at - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate:
            sent = time.perf_counter() - start
            req = serving.RequestFuncInput(prompt=ids, api_url=url + "/generate", prompt_len=len(ids),
                                           output_len=out_len, model="", lora_name=None, image_data=None,
                                           extra_request_body={})
            out = await serving.async_request_sglang_generate(req)
        if progress is not None:
            progress.update(1)
        return RequestRecord(ttft=out.ttft, gaps=list(out.itl), e2e=out.latency, prompt_len=len(ids),
                             output_len=out.output_len, success=out.success, error=out.error[-500:], arrival=sent)

    records = await asyncio.gather(*(one(ids, o, at) for ids, (_, o), at in zip(prompts, lengths, arrivals)))
    return records, time.perf_counter() - start


def run_load(url: str, prompts, lengths, arrivals, max_concurrency: int = 64, progress=None):
    """Send every request at its arrival time; return (records, duration_s)."""
    return asyncio.run(_run(url, prompts, lengths, arrivals, max_concurrency, progress))


class EnergyMeter:
    """GPU energy over a run from NVML's total-energy counters (nvmlDeviceGetTotalEnergyConsumption, mJ since the
    driver loaded; Volta and later), read before and after, summed over the GPUs this process can see. It measures
    the whole board (every process on those GPUs, idle power included), not our server alone. Where CUDA or pynvml
    is missing, `result` says why and measures nothing:

        with EnergyMeter() as meter:
            run_load(...)
        meter.result  # {"measured": True, "joules": ..., ...} or {"measured": False, "why": "no GPU (CPU run)"}
    """

    def __init__(self):
        self.result: dict = {"measured": False, "why": "not started"}
        self._nvml = self._handles = self._start = None

    @staticmethod
    def _cuda_available() -> bool:
        try:
            import torch
        except ImportError:
            return False
        return torch.cuda.is_available()

    def _indices(self, count: int) -> List[int]:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            try:
                return [int(x) for x in visible.split(",") if x.strip()]
            except ValueError:  # GPU UUIDs: fall back to every GPU
                pass
        return list(range(count))

    def _read(self) -> List[float]:
        return [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3 for h in self._handles]

    def __enter__(self) -> "EnergyMeter":
        if not self._cuda_available():
            self.result = {"measured": False, "why": "no GPU (CPU run)"}
            return self
        try:
            import pynvml
        except ImportError as e:
            self.result = {"measured": False, "why": f"pynvml not importable ({e})"}
            return self
        try:
            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                             for i in self._indices(pynvml.nvmlDeviceGetCount())]
            self._start = (time.perf_counter(), self._read())
        except pynvml.NVMLError as e:
            self.result = {"measured": False, "why": f"NVML: {e}"}
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        try:
            end, t0 = self._read(), self._start[0]
            seconds = time.perf_counter() - t0
            per_gpu = [b - a for a, b in zip(self._start[1], end)]
            self.result = {"measured": True, "joules": sum(per_gpu), "per_gpu_J": per_gpu, "seconds": seconds,
                           "mean_W": sum(per_gpu) / seconds if seconds > 0 else None,
                           "source": "NVML nvmlDeviceGetTotalEnergyConsumption (whole boards, idle included)"}
        except self._nvml.NVMLError as e:
            self.result = {"measured": False, "why": f"NVML: {e}"}
        finally:
            self._nvml.nvmlShutdown()

    def per_output_token(self, output_tokens: int) -> Optional[float]:
        """Measured joules per output token, or None when nothing was measured."""
        if not self.result.get("measured") or not output_tokens:
            return None
        return self.result["joules"] / output_tokens
