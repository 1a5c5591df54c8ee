"""Matrix rows: logprobs, hidden states, input embeddings, streaming."""

from __future__ import annotations

import asyncio

from .common import P, gen, greedy, out, run, with_background

# ---------------------------------------------------------------- logprobs, hidden states, embeddings

LOGPROB_KEYS = ("input_token_logprobs", "output_token_logprobs", "input_top_logprobs", "output_top_logprobs",
                "input_token_ids_logprobs", "output_token_ids_logprobs")


def _logprobs(o):
    m = o["meta_info"]
    return {k: m.get(k) for k in LOGPROB_KEYS}


def row_logprobs(engine):
    """return_logprob with logprob_start_len 0 / default (-1: output only) / 150, top_logprobs_num,
    token_ids_logprob."""
    async def body():
        a, b, c = await asyncio.gather(
            gen(engine, input_ids=P("lp0"), sampling_params=greedy(8), return_logprob=True, logprob_start_len=0,
                top_logprobs_num=3, token_ids_logprob=[5, 6, 7]),
            gen(engine, input_ids=P("lp_out"), sampling_params=greedy(8), return_logprob=True, top_logprobs_num=2),
            gen(engine, input_ids=P("lp150"), sampling_params=greedy(8), return_logprob=True, logprob_start_len=150,
                top_logprobs_num=1, token_ids_logprob=[9]))
        return {"start0": {"ids": a["output_ids"], **_logprobs(a)},
                "output_only": {"ids": b["output_ids"], **_logprobs(b)},
                "start150": {"ids": c["output_ids"], **_logprobs(c)}}
    return run(engine, with_background(engine, body))


def row_hidden_states(engine):
    """return_hidden_states=True (prompt rows of the uncached part, then one per output token) and "last".
    Needs enable_return_hidden_states (or return_hidden_states_mode="full")."""
    async def body():
        a, b = await asyncio.gather(
            gen(engine, input_ids=P("hs_full"), sampling_params=greedy(6), return_hidden_states=True),
            gen(engine, input_ids=P("hs_last"), sampling_params=greedy(6), return_hidden_states="last"))
        res = {}
        for name, o in (("full", a), ("last", b)):
            hs = o["meta_info"].get("hidden_states")
            res[name] = {"ids": o["output_ids"], "shape": _shapes(hs), "hidden_states": hs}
        return res
    return run(engine, with_background(engine, body))


def _shapes(x):
    """Shape of a nested list, listing ragged inner lengths."""
    if not isinstance(x, list):
        return None
    if x and isinstance(x[0], list) and x[0] and isinstance(x[0][0], list):
        return [len(x), [_shapes(y) for y in x]]
    if x and isinstance(x[0], list):
        return [len(x), len(x[0])]
    return [len(x)]


def embedding_table(model_path: str):
    import os

    import torch
    from safetensors import safe_open

    for name in sorted(os.listdir(model_path)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_path, name), "pt") as f:
                if "model.embed_tokens.weight" in f.keys():
                    return f.get_tensor("model.embed_tokens.weight").to(torch.float32)
    raise FileNotFoundError("model.embed_tokens.weight")


def row_input_embeds(engine):
    """input_embeds: not an Engine.generate/async_generate argument in 0.5.23, so GenerateReqInput(input_embeds=
    [[float]*hidden]*len) through tokenizer_manager.generate_request (what HTTP /generate does). Needs
    disable_radix_cache=True. Compared with the same prompt as input_ids on the same engine."""
    from sglang.srt.managers.io_struct import GenerateReqInput

    table = embedding_table(engine.server_args.model_path)
    prompt = P("embeds")
    embeds = table[prompt].tolist()  # python floats; SGLang makes a float32 tensor of them

    async def body():
        obj = GenerateReqInput(input_embeds=embeds, sampling_params=greedy(16))
        e = await engine.tokenizer_manager.generate_request(obj, None).__anext__()
        i = await gen(engine, input_ids=prompt, sampling_params=greedy(16))
        # bf16 engine: compare embeds-vs-ids within the engine, and only a short prefix across engines
        return {"same_as_input_ids": e["output_ids"] == i["output_ids"], "first4": e["output_ids"][:4],
                "_embeds": out(e), "_ids": out(i)}
    return run(engine, with_background(engine, body))


# ---------------------------------------------------------------- streaming

def row_streaming(engine):
    """async_generate(stream=True) with per-request stream_interval 4 and 1 (server default: stream_interval=1).
    Chunks (non-incremental mode) carry cumulative output; the tokenizer manager may coalesce chunks, so only the
    pattern of token counts is checked: first chunk 1 token, then 1 + k*interval, last = final."""
    async def one(interval):
        stream = await engine.async_generate(input_ids=P(f"stream{interval}"),
                                             sampling_params=greedy(21, stream_interval=interval), stream=True)
        counts, last = [], None
        async for chunk in stream:
            counts.append(chunk["meta_info"]["completion_tokens"])
            last = chunk
        ok = counts[-1] == 21 and all(c == 1 or (c - 1) % interval == 0 for c in counts[:-1]) \
            and counts == sorted(counts)
        return {"final": out(last), "pattern_ok": ok, "_counts": counts}

    async def body():
        a, b = await asyncio.gather(one(4), one(1))
        return {"interval4": a, "interval1": b}
    return run(engine, with_background(engine, body))
