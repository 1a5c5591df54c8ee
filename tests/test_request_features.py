"""Every per-request feature of SGLang 0.5.23 under layered prefill: each row of the matrix issues its request(s)
while two other requests decode (so its prompt runs as a layered cohort fused with decode rows) on a stock engine
and on a layered engine with the same flags, and the two results must agree. Every row runs under a timeout.

Engines: one stock/layered pair serves most rows; rows whose flags exclude each other get their own pair. Both
engines of a pair stay up for the module (`sleep_on_idle`, so the idle one leaves the cores to the other).
The README's request-feature matrix lists each row and what it shows.
"""

from __future__ import annotations

import tempfile

import pytest

import sgl_layered
from features import control, outputs, sampling
from features.common import same
from sgl_layered import cpu

# Flags the shared pair needs (stock and layered alike).
SHARED_FLAGS = dict(
    enable_custom_logit_processor=True,  # custom_logit_processor= is refused without it
    enable_return_hidden_states=True,  # return_hidden_states is refused without it
    enable_streaming_session=True,  # open_session(streaming=True) is refused without it
    # Without it the random model pads JSON with whitespace until max_new_tokens: no complete object to check.
    constrained_json_disable_any_whitespace=True,
    # Layered mode runs SGLang's non-overlap loop. Stock must too: with the overlap loop the frequency/presence
    # penalties miss the first output token depending on timing (measured: "1689, 1689" vs "1689, 611" for
    # frequency_penalty=1.5 on one prompt), so stock with overlap is no reference for anything.
    disable_overlap_schedule=True,
)

# Rows that need flags the shared pair cannot have: the extra flags and why.
GROUPS = {
    "shared": ({}, [
        sampling.row_greedy, sampling.row_temperature_top_k, sampling.row_top_p, sampling.row_min_p,
        sampling.row_random_sampling, sampling.row_penalties, sampling.row_min_new_tokens,
        sampling.row_max_new_tokens, sampling.row_stop_strings, sampling.row_stop_regex,
        sampling.row_stop_token_ids, sampling.row_ignore_eos, sampling.row_special_tokens, sampling.row_logit_bias,
        sampling.row_custom_logit_processor, sampling.row_regex, sampling.row_json_schema, sampling.row_ebnf,
        sampling.row_structural_tag, sampling.row_n_parallel, sampling.row_beam_search, sampling.row_cache_salt,
        outputs.row_logprobs, outputs.row_hidden_states, outputs.row_streaming, control.row_session,
        control.row_streaming_session, control.row_flush_cache, control.row_abort_request,
        control.row_pause_in_place, control.row_pause_retract, control.row_pause_abort,
        control.row_update_weights_from_disk,
    ]),
    # input_embeds needs the radix cache off, and stock casts input embeddings to bfloat16 unconditionally (an fp32
    # engine's scheduler dies on them), so this pair runs in bf16.
    "input_embeds": (dict(disable_radix_cache=True, dtype="bfloat16"), [outputs.row_input_embeds]),
    # Preemption happens only when the running batch is full; a small batch would serialise every other row.
    "priority": (dict(enable_priority_scheduling=True, max_running_requests=2,
                      priority_scheduling_preemption_threshold=10), [control.row_priority_preemption]),
    "lpm": (dict(schedule_policy="lpm"), [control.row_schedule_policy_lpm]),
    # Seeded sampling: sampling_seed is honoured only with deterministic inference (in SGLang's CPU engine made
    # runnable by the plugin's CPU fix, which the stock engine gets through an enabled trace).
    "deterministic": (dict(enable_deterministic_inference=True), [sampling.row_sampling_seed]),
}
CASES = [(group, row) for group, (_, rows) in GROUPS.items() for row in rows]
_ENGINES = {}


def _engines(group, model_path):
    """The group's stock and layered engines, started on first use and kept for the module."""
    if group not in _ENGINES:
        for other in [g for g in _ENGINES if g != group]:  # one pair at a time: memory and cores
            for engine in _ENGINES.pop(other).values():
                engine.shutdown()
        extra = dict(GROUPS[group][0])
        dtype = extra.pop("dtype", "float32")
        base = dict(model_path=model_path("tiny-qwen3-moe"), sleep_on_idle=True, **SHARED_FLAGS, **extra)
        stock_fix = dict(layered_prefill_trace=tempfile.mkstemp(suffix=".jsonl")[1]) \
            if group == "deterministic" else {}
        _ENGINES[group] = {
            "stock": sgl_layered.Engine(**base, **stock_fix, **cpu.engine_kwargs(dtype=dtype, chunked_prefill_size=-1)),
            "layered": sgl_layered.Engine(**base, enable_layered_prefill=True, **cpu.engine_kwargs(dtype=dtype)),
        }
    return _ENGINES[group]


@pytest.fixture(scope="module", autouse=True)
def _shutdown_engines():
    yield
    for pair in _ENGINES.values():
        for engine in pair.values():
            engine.shutdown()
    _ENGINES.clear()


# Rows check their own feature took effect (a grammar's output is valid, a banned token never appears, the same
# seed repeats its tokens, ...): these flags must hold on both engines, so no row passes by both sides ignoring it.
SELF_CHECKS = {"valid", "respected", "repeat_equal", "pattern_ok", "same_as_input_ids", "high_first", "success",
               "late_waited", "warm_cached", "waited_flush", "idle_flush", "plain_hits_banned"}


def _failed_self_checks(result, path=""):
    if isinstance(result, dict):
        bad = [f"{path}{k}" for k, v in result.items() if k in SELF_CHECKS and v is not True]
        return bad + [b for k, v in result.items() for b in _failed_self_checks(v, f"{path}{k}.")]
    return []


@pytest.mark.engine
@pytest.mark.parametrize("group,row", CASES, ids=[row.__name__[4:] for _, row in CASES])
def test_feature_behaves_as_on_stock(group, row, model_path):
    engines = _engines(group, model_path)
    stock = row(engines["stock"])
    layered = row(engines["layered"])
    assert not _failed_self_checks(stock), f"{row.__name__} does not take effect on stock: {stock}"
    assert not _failed_self_checks(layered), f"{row.__name__} does not take effect under layered prefill: {layered}"
    assert same(stock, layered), f"{row.__name__}: stock {stock} != layered {layered}"
