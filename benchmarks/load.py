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
import random
import time
from typing import List

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
