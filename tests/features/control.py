"""Matrix rows: sessions, scheduling policies, and control calls (flush, weight updates, pause, abort)."""

from __future__ import annotations

import asyncio
import time

from .common import BACKGROUND, P, gen, greedy, ids, out, run, with_background

# ---------------------------------------------------------------- sessions

def row_session(engine):
    """open_session / session_params={"id": sid, "rid": parent_rid} / close_session: turn 2 and a sibling branch
    from turn 1; plus the same context sent as plain input_ids (informational)."""
    from sglang.srt.managers.io_struct import CloseSessionReqInput, OpenSessionReqInput

    tm = engine.tokenizer_manager
    first, turn2, branch = P("session"), ids(20, 31), ids(25, 32)

    async def body():
        sid = await tm.open_session(OpenSessionReqInput(capacity_of_str_len=8192), None)  # = engine.open_session
        try:
            t1 = await gen(engine, input_ids=first, sampling_params=greedy(12), session_params={"id": sid})
            rid1 = t1["meta_info"]["id"]
            t2, b2 = await asyncio.gather(
                gen(engine, input_ids=turn2, sampling_params=greedy(12), session_params={"id": sid, "rid": rid1}),
                gen(engine, input_ids=branch, sampling_params=greedy(12), session_params={"id": sid, "rid": rid1}))
        finally:
            await tm.close_session(CloseSessionReqInput(session_id=sid), None)  # = engine.close_session(sid)
        plain = await gen(engine, input_ids=first + t1["output_ids"] + turn2, sampling_params=greedy(12))
        return {"t1": out(t1), "t2": out(t2), "branch": out(b2),
                "prompt_tokens": [o["meta_info"]["prompt_tokens"] for o in (t1, t2, b2)],
                "_t2_equals_plain": t2["output_ids"] == plain["output_ids"],
                "_cached": [o["meta_info"].get("cached_tokens") for o in (t1, t2, b2)]}
    return run(engine, with_background(engine, body))


def row_streaming_session(engine):
    """open_session(streaming=True) (needs enable_streaming_session): append-only turns, session_params={"id": sid}."""
    from sglang.srt.managers.io_struct import CloseSessionReqInput, OpenSessionReqInput

    tm = engine.tokenizer_manager

    async def body():
        sid = await tm.open_session(OpenSessionReqInput(capacity_of_str_len=8192, streaming=True), None)
        try:
            t1 = await gen(engine, input_ids=P("ssession"), sampling_params=greedy(12), session_params={"id": sid})
            t2 = await gen(engine, input_ids=ids(20, 33), sampling_params=greedy(12), session_params={"id": sid})
            t3 = await gen(engine, input_ids=ids(7, 34), sampling_params=greedy(12), session_params={"id": sid})
        finally:
            await tm.close_session(CloseSessionReqInput(session_id=sid), None)
        return {"turns": [out(t) for t in (t1, t2, t3)],
                "prompt_tokens": [t["meta_info"]["prompt_tokens"] for t in (t1, t2, t3)]}
    return run(engine, with_background(engine, body))


# ---------------------------------------------------------------- scheduling

def row_priority_preemption(engine):
    """Engine: enable_priority_scheduling=True, max_running_requests=2 (threshold 10). Two priority-0 decodes fill
    the batch; a priority-100 request arrives and preempts one (retracted, recomputed later). Greedy outputs
    must not change; the high-priority request finishes first."""
    async def body():
        done = []

        async def tracked(name, **kw):
            o = await gen(engine, **kw)
            done.append(name)
            return o

        lows = [asyncio.ensure_future(tracked(f"low{i}", input_ids=p, sampling_params=greedy(120), priority=0))
                for i, p in enumerate(BACKGROUND)]
        await asyncio.sleep(0.4)
        high = await tracked("high", input_ids=P("priority"), sampling_params=greedy(8), priority=100)
        low_outs = await asyncio.gather(*lows)
        return {"high": out(high), "lows": [out(o) for o in low_outs], "high_first": done[0] == "high",
                "retracted": sum(bool(o["meta_info"].get("num_retractions")) for o in low_outs), "_order": done}
    return run(engine, body())


def row_schedule_policy_lpm(engine):
    """Engine: schedule_policy="lpm". A cached prompt, then a burst of waiting requests, some sharing its prefix."""
    async def body():
        base = P("lpm")
        await gen(engine, input_ids=base, sampling_params=greedy(1))
        burst = [P("lpm_a", 180), base + ids(40, 41), P("lpm_b", 250), base[:200] + ids(30, 43)]
        outs = await asyncio.gather(*(gen(engine, input_ids=p, sampling_params=greedy(12)) for p in burst))
        return {"outs": [out(o) for o in outs], "_cached": [o["meta_info"].get("cached_tokens") for o in outs]}
    return run(engine, with_background(engine, body))


# ---------------------------------------------------------------- control calls

def row_flush_cache(engine):
    """flush_cache while requests run (refused: success False), with timeout_s (waits for idle), then idle; the
    prefix cache is empty afterwards. Engine.flush_cache() = tokenizer_manager.flush_cache() (no timeout)."""
    tm = engine.tokenizer_manager
    p = P("flush")

    async def body():
        await gen(engine, input_ids=p, sampling_params=greedy(4))
        warm = await gen(engine, input_ids=p, sampling_params=greedy(4))
        busy = await tm.flush_cache()
        return {"warm_cached": warm["meta_info"]["cached_tokens"] > 0, "busy_flush": busy.success}

    async def all_():
        res = await with_background(engine, body)
        waited = await tm.flush_cache(timeout_s=30.0)
        idle = await tm.flush_cache()
        after = await gen(engine, input_ids=p, sampling_params=greedy(4))
        res.update(waited_flush=waited.success, idle_flush=idle.success,
                   cached_after_flush=after["meta_info"]["cached_tokens"], after=out(after))
        return res
    return run(engine, all_())


def row_update_weights_from_disk(engine):
    """update_weights_from_disk(same model_path) while requests decode: it takes the writer lock, so it waits for
    in-flight requests; outputs after it equal outputs before. Engine.update_weights_from_disk(model_path)."""
    from sglang.srt.managers.io_struct import UpdateWeightFromDiskReqInput

    tm = engine.tokenizer_manager
    path = engine.server_args.model_path

    async def body():
        before = await gen(engine, input_ids=P("upd_before"), sampling_params=greedy(8))
        t0 = time.monotonic()
        success, message, _ = await tm.update_weights_from_disk(UpdateWeightFromDiskReqInput(model_path=path), None)
        t1 = time.monotonic()
        after = await gen(engine, input_ids=P("upd_before"), sampling_params=greedy(8))
        # SGLang loads the weights in both cases; it flushes the radix cache only if no request occupies the
        # scheduler at that instant (else success=False, "Weights were updated, but the cache was not flushed"),
        # which depends on where the background requests are: the load is what must take effect.
        updated = bool(success) or message.startswith("Weights were updated")
        return {"success": updated, "_sglang_success": success, "_message": message, "_update_s": round(t1 - t0, 2),
                "before": out(before), "after": out(after), "_cached_after": after["meta_info"]["cached_tokens"]}
    return run(engine, with_background(engine, body))


def _pause_row(engine, mode: str, update_weights: bool = False):
    """pause_generation(mode) while a streamed request decodes; a new request is sent while paused; then
    continue_generation. Tokens during the pause are informational."""
    from sglang.srt.managers.io_struct import (ContinueGenerationReqInput, PauseGenerationReqInput,
                                               UpdateWeightFromDiskReqInput)

    tm = engine.tokenizer_manager

    async def consume(stream, log):
        last = None
        async for chunk in stream:
            log.append((time.monotonic(), chunk["meta_info"]["completion_tokens"]))
            last = chunk
        return last

    async def body():
        log = []
        stream = await engine.async_generate(input_ids=P(f"pause_{mode}"), sampling_params=greedy(64), stream=True)
        main = asyncio.ensure_future(consume(stream, log))
        while not log:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        await tm.pause_generation(PauseGenerationReqInput(mode=mode))
        paused_at = time.monotonic()
        late = asyncio.ensure_future(gen(engine, input_ids=P(f"pause_late_{mode}"), sampling_params=greedy(8)))
        upd = None
        if update_weights:
            upd = (await tm.update_weights_from_disk(
                UpdateWeightFromDiskReqInput(model_path=engine.server_args.model_path), None))[0]
        await asyncio.sleep(0.6)
        late_done_while_paused = late.done()
        resumed_at = time.monotonic()
        await tm.continue_generation(ContinueGenerationReqInput())
        try:
            last = await main
        except Exception as ex:  # an aborted non-streamed request raises; a streamed one should not
            return {"main_error": f"{type(ex).__name__}: {ex}"[:200], "late": out(await late)}
        res = {"main_finish": last["meta_info"]["finish_reason"]["type"],
               "late": out(await late), "late_waited": not late_done_while_paused,
               "_tokens_during_pause": sum(1 for t, _ in log if paused_at + 0.05 < t < resumed_at),
               "_main_tokens": last["meta_info"]["completion_tokens"]}
        if mode != "abort":
            res["main"] = out(last)
        if update_weights:
            res["update_while_paused"] = upd
        return res
    return run(engine, with_background(engine, body, bg_informational=(mode == "abort")))


def row_pause_abort(engine):
    return _pause_row(engine, "abort")


def row_pause_retract(engine):
    return _pause_row(engine, "retract", update_weights=True)


def row_pause_in_place(engine):
    return _pause_row(engine, "in_place")


def row_abort_request(engine):
    """tokenizer_manager.abort_request(rid) on a decoding request (HTTP /abort_request; no Engine method): its
    finish reason is abort and the engine keeps serving."""
    async def body():
        task = asyncio.ensure_future(gen(engine, input_ids=P("abort"), sampling_params=greedy(200),
                                         rid="matrix-abort"))
        await asyncio.sleep(0.5)
        engine.tokenizer_manager.abort_request(rid="matrix-abort")
        try:
            aborted = await task
        except Exception as ex:
            return {"abort_raised": type(ex).__name__, "_error": str(ex)[:200],
                    "after": out(await gen(engine, input_ids=P("abort_after"), sampling_params=greedy(8)))}
        after = await gen(engine, input_ids=P("abort_after"), sampling_params=greedy(8))
        return {"finish": aborted["meta_info"]["finish_reason"]["type"], "after": out(after),
                "_aborted_tokens": aborted["meta_info"]["completion_tokens"]}
    return run(engine, with_background(engine, body))
