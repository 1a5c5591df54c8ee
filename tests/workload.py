"""Prompts and request timing shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import random

# 18 prompt lengths from 1 token to ~1500, several not divisible by 2, 3 or 5.
PROMPT_LENGTHS = [1, 2, 7, 31, 64, 97, 128, 255, 301, 511, 513, 700, 777, 1001, 1024, 1199, 1300, 1499]
MAX_NEW_TOKENS = 24
LOGPROB_PROMPT = list(range(100, 400))  # 300 tokens: several layer groups under any setting
# The adaptive policy's default switches plus eager_join: the pipelining tests send a short prompt B beside a
# long cohort A; by default B would wait for A (joining A's long partition gives B its first token later), and
# those tests are about the fused pass running two cohorts at once.
EAGER_JOIN = "adaptive,pipeline,stash,choose,eager_join"


# Two more prompts reuse earlier ones as prefixes, so the radix cache shortens their layered prefill.
PREFIX_SHARING = {18: (9, 100), 19: (13, 37)}  # index: (prompt whose tokens it starts with, new tokens)


def prompts(vocab_size: int = 2048, seed: int = 1234, lengths=PROMPT_LENGTHS) -> list:
    """Seeded random token-id prompts (ids below the chat markers, which sit at the top of the vocab)."""
    rng = random.Random(seed)
    out = [[rng.randrange(0, vocab_size - 3) for _ in range(n)] for n in lengths]
    if lengths is not PROMPT_LENGTHS:
        return out
    for index, (base, extra) in sorted(PREFIX_SHARING.items()):
        assert index == len(out)
        out.append(out[base] + [rng.randrange(0, vocab_size - 3) for _ in range(extra)])
    return out


def greedy(max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    return {"max_new_tokens": max_new_tokens, "temperature": 0.0, "ignore_eos": True}


async def _staggered(engine, ids_list, gap_s: float, max_new_tokens: int, request_kwargs: dict):
    tasks = []

    async def one(i, ids):
        await asyncio.sleep(i * gap_s)
        if i in PREFIX_SHARING:  # its prefix must be in the radix cache: wait until that request is done
            await tasks[PREFIX_SHARING[i][0]]
        return await engine.async_generate(input_ids=ids, sampling_params=greedy(max_new_tokens), **request_kwargs)

    for i, ids in enumerate(ids_list):
        tasks.append(asyncio.ensure_future(one(i, ids)))
    return await asyncio.gather(*tasks)


def run_staggered(engine, ids_list, gap_s: float = 0.05, full: bool = False,
                  max_new_tokens: int = MAX_NEW_TOKENS, **request_kwargs) -> list:
    """Submit prompts one after another so later prefills arrive while earlier requests decode (the tiny models
    decode 24 tokens in ~0.15 s on an idle machine: a 50 ms gap keeps several in flight on any machine).
    Returns output token ids (or the full responses with `full`); `request_kwargs` go to every request."""
    outs = engine.loop.run_until_complete(_staggered(engine, ids_list, gap_s, max_new_tokens, request_kwargs))
    drain(engine)
    return outs if full else [o["output_ids"] for o in outs]


def drain(engine) -> None:
    """A round trip through the scheduler. A request's last tokens are sent while its iteration's results are
    processed, before that iteration's trace line is written; the scheduler reads new requests only after
    that, so once this returns every trace line of the finished requests is on disk."""
    engine.get_server_info()
