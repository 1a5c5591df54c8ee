"""Matrix rows: sampling parameters, grammars, n > 1, beams, seeds, cache salt."""

from __future__ import annotations

import asyncio
import json
import re

from .common import EOS, IM_START, VOCAB, P, gen, greedy, out, run, with_background

# ---------------------------------------------------------------- sampling parameters
# Every request gets its own prompt P(tag) so that its prefill really runs (no radix-cache hit) while the
# background requests decode.

def _single(engine, tag, sampling_params, **kw):
    async def body():
        return {"out": out(await gen(engine, input_ids=P(tag), sampling_params=sampling_params, **kw))}
    return run(engine, with_background(engine, body))


def row_greedy(engine):
    """Baseline: temperature 0 (SGLang turns it into top_k=1)."""
    return _single(engine, "greedy", greedy(24))


def row_temperature_top_k(engine):
    """temperature>0 with top_k=1: goes through the sampling path but is deterministic."""
    return _single(engine, "temperature_top_k", greedy(24, temperature=0.7, top_k=1))


def row_top_p(engine):
    """A tiny top_p keeps only the most likely token: deterministic through the top-p path."""
    return _single(engine, "top_p", greedy(24, temperature=1.0, top_p=1e-6))


def row_min_p(engine):
    """min_p=1.0 keeps only tokens as likely as the best one: deterministic through the min-p path."""
    return _single(engine, "min_p", greedy(24, temperature=1.0, min_p=1.0))


def row_random_sampling(engine):
    """Real sampling (temperature/top_p/top_k/min_p together): not reproducible across engines (the RNG stream
    depends on batching); only length and range compare."""
    async def body():
        o = await gen(engine, input_ids=P("random"), sampling_params={
            "max_new_tokens": 24, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "min_p": 0.05,
            "ignore_eos": True})
        return {"len": len(o["output_ids"]), "in_vocab": all(0 <= t < VOCAB for t in o["output_ids"]),
                "_ids": o["output_ids"]}
    return run(engine, with_background(engine, body))


def row_penalties(engine):
    """frequency/presence/repetition penalties under greedy (deterministic), each alone and combined."""
    variants = [{"frequency_penalty": 1.5}, {"presence_penalty": 1.5}, {"repetition_penalty": 1.5},
                {"frequency_penalty": 0.5, "presence_penalty": 0.5, "repetition_penalty": 1.2}]

    async def body():
        outs = await asyncio.gather(*(gen(engine, input_ids=P(f"penalty{i}"), sampling_params=greedy(32, **v))
                                      for i, v in enumerate(variants)))
        return {"outs": [out(o) for o in outs]}
    return run(engine, with_background(engine, body))


def row_min_new_tokens(engine):
    """logit_bias pushes EOS to the top; min_new_tokens=6 masks it for the first 6 tokens."""
    bias = {str(EOS): 100.0}

    async def body():
        a, b = await asyncio.gather(
            gen(engine, input_ids=P("min_new0"), sampling_params={"max_new_tokens": 20, "temperature": 0.0,
                                                                  "logit_bias": bias}),
            gen(engine, input_ids=P("min_new6"), sampling_params={"max_new_tokens": 20, "temperature": 0.0,
                                                                  "logit_bias": bias, "min_new_tokens": 6}))
        return {"no_min": out(a), "min6": out(b)}
    return run(engine, with_background(engine, body))


def row_max_new_tokens(engine):
    """max_new_tokens 0 (prefill only), 1 (only the token sampled at prefill end), 5, 17."""
    async def body():
        outs = await asyncio.gather(*(gen(engine, input_ids=P(f"max_new{n}"), sampling_params=greedy(n))
                                      for n in (0, 1, 5, 17)))
        return {"outs": [out(o) for o in outs]}
    return run(engine, with_background(engine, body))


STOP_STRINGS = ["ou", "ea"]  # frequent in the embedded tokenizer's syllable text


def row_stop_strings(engine):
    """stop=[...] with no_stop_trim False/True."""
    async def body():
        a, b = await asyncio.gather(
            gen(engine, input_ids=P("stop_trim"), sampling_params=greedy(32, stop=STOP_STRINGS)),
            gen(engine, input_ids=P("stop_notrim"), sampling_params=greedy(32, stop=STOP_STRINGS,
                                                                          no_stop_trim=True)))
        return {"trim": out(a), "no_trim": out(b)}
    return run(engine, with_background(engine, body))


def row_stop_regex(engine):
    """stop_regex (a 0.5.23 sampling param)."""
    return _single(engine, "stop_regex", greedy(32, stop_regex=r"[0-9]|ck"))


STOP_IDS = list(range(3, 2045, 9))  # ~1/9 of the vocabulary: stops within a few tokens


def row_stop_token_ids(engine):
    """stop_token_ids; ignore_eos=True disables them too in 0.5.23 (Req._check_token_based_finish returns early)."""
    async def body():
        a, b = await asyncio.gather(
            gen(engine, input_ids=P("stop_ids"), sampling_params=greedy(24, stop_token_ids=STOP_IDS,
                                                                       ignore_eos=False)),
            gen(engine, input_ids=P("stop_ids_ignore_eos"), sampling_params=greedy(24, stop_token_ids=STOP_IDS)))
        return {"out": out(a), "with_ignore_eos": out(b)}
    return run(engine, with_background(engine, body))


def row_ignore_eos(engine):
    """EOS forced by logit_bias: stops after 1 token; with ignore_eos it runs to max_new_tokens."""
    bias = {str(EOS): 100.0}

    async def body():
        a, b = await asyncio.gather(*(gen(engine, input_ids=P(f"ignore_eos{flag}"), sampling_params={
            "max_new_tokens": 8, "temperature": 0.0, "logit_bias": bias, "ignore_eos": flag})
            for flag in (False, True)))
        return {"eos": out(a), "ignore_eos": out(b)}
    return run(engine, with_background(engine, body))


def row_special_tokens(engine):
    """skip_special_tokens / spaces_between_special_tokens. NB: the embedded tokenizer has no special tokens
    (chat markers are ordinary added tokens), so the flags change nothing here; marker tokens are forced into
    the output with logit_bias (+3: mixed with normal tokens)."""
    bias = {str(IM_START): 3.0, str(EOS - 2): 3.0}
    variants = [{"skip_special_tokens": True}, {"skip_special_tokens": False},
                {"skip_special_tokens": False, "spaces_between_special_tokens": False}]

    async def body():
        outs = await asyncio.gather(*(gen(engine, input_ids=P(f"special{i}"),
                                          sampling_params=greedy(12, logit_bias=bias, **v))
                                      for i, v in enumerate(variants)))
        return {"outs": [out(o) for o in outs]}
    return run(engine, with_background(engine, body))


def row_logit_bias(engine):
    """Moderate biases on two tokens under greedy."""
    return _single(engine, "logit_bias", greedy(24, logit_bias={"17": 4.0, "400": 4.0}))


BANNED = list(range(0, 1024))  # half the vocabulary: an unconstrained output surely hits it


def row_custom_logit_processor(engine):
    """custom_logit_processor=DisallowedTokensLogitsProcessor.to_str() (SGLang's own class, importable in the
    scheduler) with sampling_params custom_params={"token_ids": [...]}. Needs enable_custom_logit_processor."""
    from sglang.srt.sampling.custom_logit_processor import DisallowedTokensLogitsProcessor

    async def body():
        o, plain = await asyncio.gather(
            gen(engine, input_ids=P("clp"), custom_logit_processor=DisallowedTokensLogitsProcessor.to_str(),
                sampling_params=greedy(24, custom_params={"token_ids": BANNED})),
            gen(engine, input_ids=P("clp_plain"), sampling_params=greedy(24, custom_params={"token_ids": BANNED})))
        return {"out": out(o), "respected": not set(o["output_ids"]) & set(BANNED),
                "params_without_processor": out(plain),
                "plain_hits_banned": bool(set(plain["output_ids"]) & set(BANNED))}
    return run(engine, with_background(engine, body))


# ---------------------------------------------------------------- grammars

def _grammar_row(engine, key, value, check):
    async def body():
        o = await gen(engine, input_ids=P(key), sampling_params={"max_new_tokens": 48, "temperature": 0.0,
                                                                 key: value})
        return {"out": out(o), "valid": check(o["text"])}
    return run(engine, with_background(engine, body))


def row_regex(engine):
    pattern = r"(yes|no|maybe)-[0-9]{2}"
    return _grammar_row(engine, "regex", pattern, lambda t: re.fullmatch(pattern, t) is not None)


JSON_SCHEMA = {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"enum": ["x", "y"]}},
               "required": ["a", "b"], "additionalProperties": False}


def _json_ok(t):
    try:
        v = json.loads(t)
    except ValueError:
        return False
    return isinstance(v, dict) and set(v) == {"a", "b"} and isinstance(v["a"], bool) and v["b"] in ("x", "y")


def row_json_schema(engine):
    return _grammar_row(engine, "json_schema", json.dumps(JSON_SCHEMA), _json_ok)


def row_ebnf(engine):
    grammar = 'root ::= ("yes" | "no") "!"'
    return _grammar_row(engine, "ebnf", grammar, lambda t: t in ("yes!", "no!"))


STRUCTURAL_TAG = {"type": "structural_tag", "format": {
    "type": "tag", "begin": "<r>", "end": "</r>",
    # max_whitespace_cnt: the engine's constrained_json_* flags do not reach structural tags
    "content": {"type": "json_schema", "json_schema": JSON_SCHEMA, "max_whitespace_cnt": 1}}}


def row_structural_tag(engine):
    def ok(t):
        return t.startswith("<r>") and t.endswith("</r>") and _json_ok(t[3:-4])
    return _grammar_row(engine, "structural_tag", json.dumps(STRUCTURAL_TAG), ok)


# ---------------------------------------------------------------- n, beams, seeds, cache salt

def row_n_parallel(engine):
    """n=2 greedy (identical samples; the response is a list) and n=3 sampled (lengths only)."""
    async def body():
        g, s = await asyncio.gather(
            gen(engine, input_ids=P("n2"), sampling_params=greedy(16, n=2)),
            gen(engine, input_ids=P("n3"), sampling_params={"max_new_tokens": 16, "temperature": 1.0, "n": 3,
                                                            "ignore_eos": True}))
        return {"greedy": [out(o) for o in g], "sampled_lens": [len(o["output_ids"]) for o in s]}
    return run(engine, with_background(engine, body))


def row_beam_search(engine):
    """beam_width (a 0.5.23 sampling param): beam_width=3, n=2 returned sequences."""
    async def body():
        o = await gen(engine, input_ids=P("beam"), sampling_params={"max_new_tokens": 8, "beam_width": 3, "n": 2,
                                                                    "ignore_eos": True})
        return {"result": _strip(o)}
    return run(engine, with_background(engine, body))


def _strip(o):
    """Drop timing/cache fields from a response so it compares across engines."""
    if isinstance(o, list):
        return [_strip(x) for x in o]
    if isinstance(o, dict):
        drop = {"id", "e2e_latency", "queue_time", "inference_time", "prefill_launch_delay",
                "prefill_launch_latency", "response_sent_to_client_ts", "request_received_ts",
                "decode_throughput", "prefill_finished_ts", "weight_version", "total_retractions",
                "cached_tokens_details", "spec_verify_ct", "cached_tokens", "num_retractions"}
        return {k: _strip(v) for k, v in o.items() if k not in drop and not k.endswith(("_time", "_ts", "_latency"))}
    return o


def row_sampling_seed(engine):
    """sampling_seed, with --enable-deterministic-inference (without it SGLang ignores the seed and samples from
    the process-wide generator, whose draws depend on batch composition and timing): each request's samples follow
    from its seed and positions alone, so requests staggered beside running decodes give stock's tokens, and the
    same seed gives the same tokens."""
    async def one(i, seed):
        await asyncio.sleep(0.1 * i)
        return await gen(engine, input_ids=P(f"seed{i}"), sampling_params={
            "max_new_tokens": 16, "temperature": 0.9, "top_p": 0.9, "top_k": 20, "sampling_seed": seed,
            "ignore_eos": True})

    async def body():
        outs = await asyncio.gather(*(one(i, seed) for i, seed in enumerate((1234, 1234, 7, 99))))
        again = await gen(engine, input_ids=P("seed0"), sampling_params={
            "max_new_tokens": 16, "temperature": 0.9, "top_p": 0.9, "top_k": 20, "sampling_seed": 1234,
            "ignore_eos": True})
        return {"outs": [out(o) for o in outs], "repeat_equal": again["output_ids"] == outs[0]["output_ids"]}
    return run(engine, with_background(engine, body))


def row_cache_salt(engine):
    """cache_salt= (kw-only Engine.generate arg): a different salt misses the radix cache, the same salt hits."""
    async def body():
        p = P("salt")
        a = await gen(engine, input_ids=p, sampling_params=greedy(6), cache_salt="s1")
        b = await gen(engine, input_ids=p, sampling_params=greedy(6), cache_salt="s2")
        c = await gen(engine, input_ids=p, sampling_params=greedy(6), cache_salt="s1")
        return {"outs": [out(o) for o in (a, b, c)],
                "cached": [o["meta_info"]["cached_tokens"] > 0 for o in (a, b, c)]}
    return run(engine, with_background(engine, body))
