"""Shared pieces of the request-feature matrix (tests/test_request_features.py): prompts, the background decodes
every row's requests arrive beside, timeouts, and the comparison of a stock result with a layered one.

Each row function takes a started engine, issues its request(s) while two greedy requests decode (so the row's
prefill runs as a layered cohort fused with decode rows), and returns a JSON-comparable dict. `same(a, b)` compares
two rows' results: keys starting with "_" are informational (timing-dependent) and skipped; floats compare within
1e-3. Every row's requests run under one timeout: a hang fails the row, it never blocks the suite.
"""

from __future__ import annotations

import asyncio
import math
import random

ROW_TIMEOUT_S = 90.0  # per row, covers every request it makes (engine.loop + asyncio.wait_for)

VOCAB = 2048
EOS = 2047  # <|im_end|> in the embedded tokenizer (an ordinary added token, not "special")
IM_START = 2046


def ids(n: int, seed: int) -> list:
    rng = random.Random(seed)
    return [rng.randrange(0, VOCAB - 3) for _ in range(n)]


def P(tag: str, n: int = 300) -> list:
    """A fresh prompt per request (stable across engines): a prompt already in the radix cache would prefill a
    single token, and the feature request would not run through the layered cohort path at all."""
    import zlib

    return ids(n, zlib.crc32(tag.encode()))
BACKGROUND = [ids(9, 21), ids(13, 22)]
BG_TOKENS = 160


def greedy(max_new: int = 16, **extra) -> dict:
    return {"max_new_tokens": max_new, "temperature": 0.0, "ignore_eos": True, **extra}


def out(o: dict) -> dict:
    m = o["meta_info"]
    return {"ids": list(o["output_ids"]), "text": o.get("text"), "finish": m.get("finish_reason"),
            "completion_tokens": m.get("completion_tokens")}


def run(engine, coro, timeout: float = ROW_TIMEOUT_S):
    return engine.loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def gen(engine, **kw) -> dict:
    return await engine.async_generate(**kw)


async def with_background(engine, body, delay: float = 0.25, bg_tokens: int = BG_TOKENS,
                          bg_informational: bool = False) -> dict:
    """Start greedy decodes, let them run `delay` s, then await body(); the body's first prefill lands while
    they decode. Returns body's dict plus the background outputs (greedy: comparable across engines)."""
    bg = [asyncio.ensure_future(engine.async_generate(input_ids=p, sampling_params=greedy(bg_tokens)))
          for p in BACKGROUND]
    await asyncio.sleep(delay)
    result = await body()
    result["_background_running_at_end"] = sum(not t.done() for t in bg)
    outs = await asyncio.gather(*bg, return_exceptions=True)
    key = "_background" if bg_informational else "background"
    result[key] = [o["output_ids"] if isinstance(o, dict) else repr(o) for o in outs]
    return result


def same(a, b, tol: float = 1e-3) -> bool:
    """Structural equality; floats within tol (absolute or relative); keys starting with '_' ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        ka = {k for k in a if not str(k).startswith("_")}
        kb = {k for k in b if not str(k).startswith("_")}
        return ka == kb and all(same(a[k], b[k], tol) for k in ka)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b
