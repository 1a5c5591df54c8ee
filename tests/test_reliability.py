"""Reliability through the Engine API: aborts at every stage of a layered prefill free everything at once and
leave other requests untouched; a cohort mid-layers is never visible to the radix cache; a KV pool too small
for the waiting prompts queues and retracts instead of failing. SGLang's strict idle leak check is on, so a
leaked KV slot or request slot also crashes the scheduler."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import pytest

import sgl_layered
from sgl_layered import cpu
from sgl_layered.models import get_preset
from trace_checks import read
from workload import EAGER_JOIN, drain

MODEL = "tiny-qwen3-moe"
FIRST_TOKEN = "first token"
LAYERS = get_preset(MODEL).num_layers


def _requests(n, seed):
    rng = random.Random(seed)
    return [dict(rid=f"r{seed}-{i}", ids=[rng.randrange(0, 2045) for _ in range(rng.choice([1, 3, 40, 200, 700]))],
                 n=rng.randrange(1, 20), at=0.02 * i + (0.3 if i % 25 == 0 else 0)) for i in range(n)]


async def _run(engine, reqs, aborts):
    """Send every request at its time and abort the chosen ones: `aborts[rid]` is either seconds after sending
    or FIRST_TOKEN (streamed; aborted as soon as its first token arrives, so the abort lands while it decodes
    whatever the machine's speed)."""
    async def one(r):
        await asyncio.sleep(r["at"])
        params = {"max_new_tokens": r["n"], "temperature": 0.0, "ignore_eos": True}
        when = aborts.get(r["rid"])
        if when == FIRST_TOKEN:
            last = None
            async for chunk in await engine.async_generate(input_ids=r["ids"], rid=r["rid"], sampling_params=params,
                                                           stream=True):
                if last is None and chunk["output_ids"]:
                    engine.tokenizer_manager.abort_request(r["rid"])
                last = dict(chunk, output_ids=list(chunk["output_ids"]))
            return last
        task = asyncio.ensure_future(engine.async_generate(input_ids=r["ids"], rid=r["rid"], sampling_params=params))
        if when is not None:
            await asyncio.sleep(when)
            engine.tokenizer_manager.abort_request(r["rid"])
        return await task

    return await asyncio.gather(*(one(r) for r in reqs))


def _idle_pools(engine) -> dict:
    drain(engine)
    engine.flush_cache()
    return engine.get_server_info()["internal_states"][0]["sgl_layered"]


def _assert_nothing_leaked(state):
    assert state["cohorts_in_flight"] == 0 and state["stash_bytes"] == 0, state
    assert state["kv_available"] + state["kv_evictable"] == state["kv_total"], f"KV slots leaked: {state}"
    assert state["req_slots_free"] == state["req_slots_total"], f"request slots leaked: {state}"
    assert state["sglang_leak_warnings"] == 0, state


@pytest.fixture
def strict_leak_check(monkeypatch):
    monkeypatch.setenv("SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE", "1")


@pytest.mark.engine
def test_random_aborts_leak_nothing_and_spare_other_requests(model_path, tmp_path, strict_leak_check):
    """240 requests, 30% aborted at random moments and 8 right after their first token: the trace shows aborts while queued, between groups,
    before the last group and while decoding; nothing leaks; every other request yields the tokens it yields
    in a run without aborts."""
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path(MODEL), enable_layered_prefill=True,
                                layered_prefill_groups=LAYERS, layered_prefill_trace=str(trace),
                                **cpu.engine_kwargs())
    try:
        reqs = _requests(240, seed=7)
        reference = {r["rid"]: o for r, o in zip(reqs, engine.loop.run_until_complete(_run(engine, reqs, {})))}
        _assert_nothing_leaked(_idle_pools(engine))
        open(trace, "w").close()  # keep only the run with aborts

        reqs = [dict(r, rid=r["rid"] + "-again") for r in reqs]
        rng = random.Random(11)
        aborts = {r["rid"]: rng.uniform(0.0, 0.25) for r in rng.sample(reqs, k=len(reqs) * 3 // 10)}
        # Random moments can all land before decode on a loaded machine; these land in decode by construction.
        long_outputs = [r for r in reqs if r["n"] >= 12 and r["rid"] not in aborts]
        aborts.update({r["rid"]: FIRST_TOKEN for r in rng.sample(long_outputs, k=8)})
        outputs = engine.loop.run_until_complete(_run(engine, reqs, aborts))
        state = _idle_pools(engine)
    finally:
        engine.shutdown()
    _assert_nothing_leaked(state)

    for r, out in zip(reqs, outputs):
        want = reference[r["rid"][:-len("-again")]]["output_ids"]
        finish = out["meta_info"]["finish_reason"]["type"]
        if r["rid"] not in aborts:
            assert finish == "length" and out["output_ids"] == want, r["rid"]
        elif finish != "abort":  # the abort came after the request had finished
            assert out["output_ids"] == want, r["rid"]
        else:  # what was streamed before the abort is a prefix of the full answer
            assert want[:len(out["output_ids"])] == out["output_ids"], r["rid"]

    stages, freed_at = Counter(), {}
    rows = read(trace)
    for row in rows:
        for a in row.get("aborts", []):
            stage = a["stage"]
            if stage.startswith("layers"):
                done, total = map(int, stage.split()[1].split("/"))
                stage = "before first group" if done == 0 else \
                    "before last group" if done == total - 1 else "between groups"
            if a["freed_now"]:
                freed_at[a["rid"]] = row["iter"]
            stages[stage] += 1
    for row in rows:  # a dropped cohort runs no further group
        for piece in row["prefill"]:
            late = [rid for rid in piece["rids"] if freed_at.get(rid, row["iter"] + 1) <= row["iter"]]
            assert not late, f"iteration {row['iter']} ran dropped requests {late}"
    print("abort stages:", dict(stages), "dropped at once:", len(freed_at))
    # Where random moments land depends on this machine's speed; every stage must be hit (decode by the
    # first-token aborts), with the two mid-layer
    # stages counted together (a cohort of 5 groups spends one iteration before its last group and three between
    # groups). The deterministic mid-layer abort is test_aborted_cohort_is_dropped_before_its_next_group.
    stages["mid-layers"] = stages["between groups"] + stages["before last group"]
    for stage in ("queued", "mid-layers", "decode"):
        assert stages[stage] > 0, f"no abort landed {stage}: {dict(stages)}"


@pytest.mark.engine
def test_aborted_cohort_is_dropped_before_its_next_group(model_path, tmp_path, strict_leak_check):
    """A cohort whose every request is aborted mid-layers runs no further group: its KV slots and stashed
    activations are freed at the abort, the client gets an abort, and the engine serves on."""
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path(MODEL), enable_layered_prefill=True,
                                layered_prefill_groups=LAYERS, layered_prefill_trace=str(trace),
                                **cpu.engine_kwargs())
    rng = random.Random(4)

    async def abort_after_first_pass(rid, ids):
        task = asyncio.ensure_future(_gen(engine, ids, 50, rid=rid))
        for _ in range(5000):
            await asyncio.sleep(0.001)
            if trace.exists() and rid in trace.read_text():
                break
        engine.tokenizer_manager.abort_request(rid)
        return await task

    try:
        for attempt in range(5):  # the abort must land while the cohort is mid-layers; retry if it was late
            rid = f"long-{attempt}"
            out = engine.loop.run_until_complete(abort_after_first_pass(rid, [rng.randrange(0, 2045)
                                                                              for _ in range(1500)]))
            # Aborts are recorded with the next iteration's trace line: run one.
            engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 1})
            drain(engine)
            notes = [a for row in read(trace) for a in row.get("aborts", []) if a["rid"] == rid]
            if notes and notes[0]["stage"].startswith("layers"):
                break
        state = _idle_pools(engine)
        after = engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 3})
    finally:
        engine.shutdown()
    assert notes and notes[0]["stage"].startswith("layers"), f"abort never landed mid-layers: {notes}"
    assert notes[0]["freed_now"]
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and out["output_ids"] == []
    rows = read(trace)
    noted = next(row["iter"] for row in rows if any(a["rid"] == rid for a in row.get("aborts", [])))
    assert not [row["iter"] for row in rows if row["iter"] >= noted and any(rid in p["rids"] for p in row["prefill"])]
    _assert_nothing_leaked(state)
    assert len(after["output_ids"]) == 3


def _gen(engine, ids, n, **kw):
    return engine.async_generate(input_ids=ids, sampling_params={"max_new_tokens": n, "temperature": 0.0,
                                                                 "ignore_eos": True}, **kw)


@pytest.mark.engine
def test_cohort_mid_layers_is_invisible_to_radix_cache(model_path, tmp_path, strict_leak_check):
    """B shares A's first 140 tokens and is admitted while A's cohort is still mid-layers (the adaptive policy
    pipelines it beside A): B must prefill all its tokens (A's KV is partial) and answer exactly as it does
    alone. C shares the same prefix but arrives after A finished: it reuses A's KV."""
    rng = random.Random(3)
    a = [rng.randrange(0, 2045) for _ in range(1200)]
    b = a[:140] + [rng.randrange(0, 2045) for _ in range(40)]
    c = a[:140] + [rng.randrange(0, 2045) for _ in range(30)]
    cs = [[rng.randrange(0, 2045) for _ in range(n)] for n in (9, 10, 11)]
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path(MODEL), enable_layered_prefill=True,
                                layered_prefill_policy="adaptive", layered_prefill_group_tokens=280,
                                layered_prefill_switches=EAGER_JOIN,
                                layered_prefill_trace=str(trace), **cpu.engine_kwargs())

    def a_passes():
        try:  # the engine may be writing the trace's last line right now
            return [p for row in read(trace) for p in row["prefill"] if p["tokens"] == len(a)] if trace.exists() else []
        except json.JSONDecodeError:
            return []

    async def scenario():
        decoding = [asyncio.ensure_future(_gen(engine, x, 120)) for x in cs]
        await asyncio.sleep(0.4)
        task_a = asyncio.ensure_future(_gen(engine, a, 4))
        for _ in range(5000):
            await asyncio.sleep(0.002)
            if a_passes():
                break
        out_b = await _gen(engine, b, 6)
        out_a = await task_a
        out_c = await _gen(engine, c, 6)
        await asyncio.gather(*decoding)
        return out_a, out_b, out_c

    try:
        out_a, out_b, out_c = engine.loop.run_until_complete(scenario())
        drain(engine)
        rows = read(trace)
        engine.flush_cache()
        alone_b = engine.generate(input_ids=b, sampling_params={"max_new_tokens": 6, "temperature": 0.0,
                                                                "ignore_eos": True})
        alone_c = engine.generate(input_ids=c, sampling_params={"max_new_tokens": 6, "temperature": 0.0,
                                                                "ignore_eos": True})
        state = _idle_pools(engine)
    finally:
        engine.shutdown()
    _assert_nothing_leaked(state)
    piece_b = next(p for row in rows for p in row["prefill"] if out_b["meta_info"]["id"] in p["rids"])
    piece_c = next(p for row in rows for p in row["prefill"] if out_c["meta_info"]["id"] in p["rids"])
    cohort_a = next(p["cohort"] for row in rows for p in row["prefill"] if out_a["meta_info"]["id"] in p["rids"])
    a_iters = [row["iter"] for row in rows for p in row["prefill"] if p["cohort"] == cohort_a]
    b_first = min(row["iter"] for row in rows for p in row["prefill"] if p["cohort"] == piece_b["cohort"])
    assert b_first < max(a_iters), "B was not admitted while A was mid-layers; the test proves nothing"
    assert piece_b["tokens"] == len(b), "B matched A's partial KV in the radix cache"
    assert out_b["output_ids"] == alone_b["output_ids"]
    assert piece_c["tokens"] == len(c) - 140, "C did not reuse the finished cohort's KV"
    assert out_c["meta_info"]["cached_tokens"] == 140
    assert out_c["output_ids"] == alone_c["output_ids"]


@pytest.mark.engine
def test_memory_pressure_queues_retracts_and_rejects_oversized(model_path, strict_leak_check):
    """A 1200-token KV pool and six requests needing up to 530 tokens each, arriving 0.2 s apart: SGLang admits
    each new one reserving little for the running ones (conservativeness 0.05; EOS allowed, since SGLang
    reserves everything for ignore_eos requests), so decode runs out of KV and SGLang retracts. Everything completes with the tokens each request gives alone and nothing leaks. A prompt larger
    than the pool gets SGLang's own error."""
    rng = random.Random(9)
    prompts = [[rng.randrange(0, 2045) for _ in range(30)] for _ in range(6)]
    sampling = {"max_new_tokens": 500, "temperature": 0.0}
    engine = sgl_layered.Engine(model_path=model_path(MODEL), enable_layered_prefill=True,
                                layered_prefill_groups=3, schedule_conservativeness=0.05,
                                **cpu.engine_kwargs(max_total_tokens=1200))

    async def together():
        async def one(i, p):
            await asyncio.sleep(0.2 * i)
            return await engine.async_generate(input_ids=p, sampling_params=sampling)
        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    try:
        outs = engine.loop.run_until_complete(together())
        state = _idle_pools(engine)
        alone = [engine.generate(input_ids=p, sampling_params=sampling) for p in prompts]
        with pytest.raises(ValueError, match=r"Input length \(1300 tokens\) exceeds the maximum allowed length"):
            engine.generate(input_ids=[5] * 1300, sampling_params={"max_new_tokens": 4})  # SGLang's own check
        after = _idle_pools(engine)
    finally:
        engine.shutdown()
    _assert_nothing_leaked(state)
    _assert_nothing_leaked(after)
    assert sum(o["meta_info"].get("num_retractions", 0) for o in outs) > 0, "no retraction: no memory pressure"
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in alone]


@pytest.mark.engine
def test_abort_mid_chunk_in_chunk_by_layer_hybrid(model_path, tmp_path, strict_leak_check):
    """Chunk x layer hybrid (256-token chunks): a 1500-token prompt aborted while one of its chunks is mid-layers
    ends with an abort; no chunk runs after it, nothing leaks, and the engine serves on."""
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path(MODEL), enable_layered_prefill=True,
                                layered_prefill_groups=LAYERS, layered_prefill_chunk_tokens=256,
                                layered_prefill_trace=str(trace), **cpu.engine_kwargs())
    rng = random.Random(8)

    async def abort_after_two_pieces(rid, ids):
        task = asyncio.ensure_future(_gen(engine, ids, 20, rid=rid))
        for _ in range(5000):
            await asyncio.sleep(0.001)
            if trace.exists() and trace.read_text().count(rid) >= 2:
                break
        engine.tokenizer_manager.abort_request(rid)
        return await task

    try:
        out = engine.loop.run_until_complete(abort_after_two_pieces("chunked", [rng.randrange(0, 2045)
                                                                                for _ in range(1500)]))
        after = engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 3})
        state = _idle_pools(engine)
    finally:
        engine.shutdown()
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and out["output_ids"] == []
    pieces = [p for row in read(trace) for p in row["prefill"] if "chunked" in p["rids"]]
    assert 2 <= len(pieces) < 6 * LAYERS, "the prompt was not cut short by the abort"
    _assert_nothing_leaked(state)
    assert len(after["output_ids"]) == 3


@pytest.mark.engine
def test_retracting_pause_mid_layers_recomputes_the_cohort(model_path, tmp_path, strict_leak_check):
    """pause_generation(mode="retract") while a cohort is mid-layers (SGLang retracts only its own batches): the
    cohort's KV and activations are freed, its requests are recomputed after continue_generation, and every output
    equals a run without the pause; nothing leaks."""
    import json
    import os

    from sglang.srt.managers.io_struct import ContinueGenerationReqInput, PauseGenerationReqInput

    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path(MODEL), enable_layered_prefill=True,
                                layered_prefill_groups=LAYERS, layered_prefill_trace=str(trace),
                                **cpu.engine_kwargs())
    rng = random.Random(5)
    long_ids, short_ids = [rng.randrange(0, 2045) for _ in range(700)], [rng.randrange(0, 2045) for _ in range(9)]
    params = {"max_new_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    tm = engine.tokenizer_manager

    async def paused_run():
        decoding = asyncio.ensure_future(engine.async_generate(input_ids=short_ids, sampling_params=params))
        await asyncio.sleep(0.3)
        cohort = asyncio.ensure_future(engine.async_generate(input_ids=long_ids, sampling_params=params))
        for _ in range(5000):  # until the long prompt's cohort has run its first group (of LAYERS)
            await asyncio.sleep(0.002)
            if os.path.exists(trace) and any(p["tokens"] == len(long_ids) for line in open(trace) if line.strip()
                                             for p in json.loads(line)["prefill"]):
                break
        await tm.pause_generation(PauseGenerationReqInput(mode="retract"))
        state = (await tm.get_internal_state())[0]["sgl_layered"]
        await asyncio.sleep(0.2)
        await tm.continue_generation(ContinueGenerationReqInput())
        return await asyncio.wait_for(asyncio.gather(decoding, cohort), 120), state

    try:
        (short, long_), paused_state = engine.loop.run_until_complete(paused_run())
        want = [engine.generate(input_ids=ids, sampling_params=params)["output_ids"] for ids in (short_ids, long_ids)]
        state = _idle_pools(engine)
    finally:
        engine.shutdown()
    assert paused_state["cohorts_in_flight"] == 0 and paused_state["stash_bytes"] == 0, paused_state
    assert [short["output_ids"], long_["output_ids"]] == want
    assert long_["meta_info"]["num_retractions"] >= 1, long_["meta_info"]
    _assert_nothing_leaked(state)
