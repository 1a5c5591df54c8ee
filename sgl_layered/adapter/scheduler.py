"""The SGLang Scheduler subclass that runs layered prefill (installed by a REPLACE hook in each rank).

With layered prefill off it only records the optional trace and otherwise defers to SGLang. With it on:
SGLang still admits prompts (its own PrefillAdder: FCFS, prefix cache, KV memory) but an admitted prefill
batch becomes a cohort that runs one layer group per iteration, fused into the decode forward, instead of
running whole. Each override below wraps one seam and calls the parent for everything else.
"""

from __future__ import annotations

import logging
import time

from sglang.srt.managers.schedule_batch import NextBatchPlan
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.runtime_context import get_observability, get_parallel

from sgl_layered.core.config import LayeredConfig, LayeredConfigError
from sgl_layered.core.step import Measurement

from . import hooks, settings
from .layered_step import LayeredResult, LayeredRuntime
from .observer import IterationObserver
from .timing import IterationClock, device_waiter

logger = logging.getLogger("sgl_layered")

_ATTENTION_BACKEND_CLASSES = {"TorchNativeAttnBackend", "TritonAttnBackend", "FlashInferAttnBackend",
                               "FlashAttentionBackend"}


class LayeredScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        self._sgl_layered_config = LayeredConfig.from_env() or LayeredConfig()
        self._layered = None
        self._layered_iteration = None
        self._observer = None
        self._clock = None  # on the TP leader: times iterations for the policy's online cost model
        self._scheduling = {}  # the last scheduling call's timing, for the trace
        self._measurements = []  # the leader's, waiting to ride SGLang's request broadcast to every rank
        super().__init__(*args, **kwargs)
        cfg = self._sgl_layered_config
        self._sgl_layered_hooks = hooks.verify_scheduler_hooks(cfg)
        if cfg.enable_layered_prefill:
            self._check_resolved_settings()
            self._layered = LayeredRuntime(self, cfg)
            parallel = get_parallel()
            if parallel.attn_tp_rank == 0 and parallel.attn_cp_rank == 0 and parallel.pp_rank == 0:
                self._clock = IterationClock(device_waiter(self.tp_worker.model_runner.device))
            logger.info("layered prefill on: groups=%s (group tokens %d), %d layers",
                        cfg.layered_prefill_groups, cfg.layered_prefill_group_tokens, self._layered.num_layers)
        if cfg.layered_prefill_trace or cfg.needs_expert_hook:
            self._observer = IterationObserver(cfg, self.tp_worker.model_runner,
                                               get_observability().enable_metrics)

    def _check_resolved_settings(self) -> None:
        """Re-check, on SGLang's resolved settings, what the launcher checked on the user's input."""
        problems = []
        if self.enable_overlap:
            problems.append("the overlap scheduler is on (layered mode needs --disable-overlap-schedule)")
        if self.is_mixed_chunk:
            problems.append("--enable-mixed-chunk is on")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size > 0:
            problems.append(f"chunked prefill is on (size {self.chunked_prefill_size})")
        if not self.spec_algorithm.is_none():
            problems.append("speculative decoding is on")
        if get_parallel().pp_size > 1:
            problems.append("pipeline parallelism is on")
        if self.require_mlp_sync:
            problems.append("data-parallel attention is on")
        backend = type(self.tp_worker.model_runner.attn_backend).__name__
        if backend not in _ATTENTION_BACKEND_CLASSES:
            problems.append(f"SGLang chose the {backend} attention backend; pass --attention-backend with one of "
                            f"{', '.join(settings.ATTENTION_BACKENDS)}")
        if problems:
            raise LayeredConfigError("layered prefill cannot run: " + "; ".join(problems))

    def get_init_info(self):
        info = super().get_init_info()
        info["sgl_layered"] = {"hooks": self._sgl_layered_hooks,
                               "layered": self._layered is not None,
                               "config": self._sgl_layered_config.to_json()}
        return info

    # -- requests -----------------------------------------------------------------------------------
    def _add_request_to_queue(self, req, is_retracted: bool = False):
        # SGLang 0.5.23 accepts an empty prompt and then crashes the scheduler on its zero-row forward (its
        # CPU MoE cannot reshape zero rows). Refuse it the way SGLang refuses an over-long prompt: a clear
        # abort to the client, after a one-token placeholder prefill.
        # Token ids outside the vocabulary likewise reach the embedding and kill the scheduler process.
        if not is_retracted and req.to_finish is None:
            problem = _input_problem(req.origin_input_ids, int(self.model_config.vocab_size))
            if problem:
                req.set_finish_with_abort(problem)
        return super()._add_request_to_queue(req, is_retracted=is_retracted)

    # -- scheduling: one policy decision per iteration ---------------------------------------------
    def get_next_batch_to_run(self, running_batch, last_batch):
        waiting, start = len(self.waiting_queue), time.perf_counter_ns()
        plan = self._next_batch(running_batch, last_batch)
        # For the trace: this scheduling call's time (SGLang's admission included) and our policy's share of it.
        self._scheduling = {"waiting": waiting, "us": (time.perf_counter_ns() - start) / 1e3,
                            "policy_us": self._layered.policy_ns / 1e3 if self._layered is not None else 0.0}
        return plan

    def _next_batch(self, running_batch, last_batch):
        self._layered_iteration = None
        if self._layered is None:
            return super().get_next_batch_to_run(running_batch=running_batch, last_batch=last_batch)
        layered = self._layered
        # Only a cohort that finished its last group may merge into the running batch, never one mid-layers. SGLang
        # merges it, drops finished requests, then asks _should_defer_prefill: the policy decides there.
        plan = super().get_next_batch_to_run(running_batch=running_batch, last_batch=layered.take_finished())
        batch, running = plan.batch_to_run, plan.running_batch
        admitted = None
        if batch is not None and batch.forward_mode.is_extend():
            # SGLang chose this prefill batch under the Step's limits; we run it group by group instead.
            admitted = layered.admit(batch)
            batch = self.update_running_batch(running) if not running.is_empty() else None
            if batch is not None and batch.is_empty():
                batch = None
        iteration = layered.iteration(batch, admitted)
        if iteration is None:
            return NextBatchPlan(batch_to_run=batch, running_batch=running)
        self._layered_iteration = iteration
        return NextBatchPlan(batch_to_run=iteration.host_batch, running_batch=running)

    def _should_defer_prefill(self, running_batch) -> bool:
        # SGLang calls this once per scheduling call, after merging the last prefill into the running batch and
        # dropping finished requests: the decode batch is known, so the iteration's Step is decided here.
        if self._layered is not None and self._layered.schedule(running_batch).admit is None:
            return True
        return super()._should_defer_prefill(running_batch)

    def get_prefill_adder_class(self):
        adder_class = super().get_prefill_adder_class()
        return self._layered.make_prefill_adder(adder_class) if self._layered is not None else adder_class

    # -- measurements reach every rank through SGLang's own request broadcast ------------------------
    def _poll_timeout_aborts(self):
        # Called on the TP leader only; what it returns rides the broadcast of received requests to every rank
        # (SGLang sends its timeout aborts this way for the same reason: every rank must decide alike).
        local = super()._poll_timeout_aborts()
        measurements, self._measurements = self._measurements, []
        return [*local, *measurements]

    def process_input_requests(self, recv_reqs):
        if self._layered is not None and recv_reqs:
            measured = [r for r in recv_reqs if isinstance(r, Measurement)]
            if measured:
                for m in measured:
                    self._layered.observe(m)
                recv_reqs = [r for r in recv_reqs if not isinstance(r, Measurement)]
        self._measurements.clear()  # not shipped this loop (dispatch paused): dropped alike on every rank
        return super().process_input_requests(recv_reqs)

    # -- execution ----------------------------------------------------------------------------------
    def run_batch(self, batch, *args, **kwargs):
        iteration = self._layered_iteration
        if self._observer is not None:
            self._observer.begin(self.forward_ct + 1, batch, iteration, self._scheduling)
        if self._clock is not None:
            self._clock.start()
        if iteration is None:
            result = super().run_batch(batch, *args, **kwargs)
        else:
            result = self._layered.run(iteration, super().run_batch)
        if self._observer is not None:
            self._observer.forward_done()
        return result

    def process_batch_result(self, batch, result):
        processed = []
        iteration = self._layered_iteration
        if isinstance(result, LayeredResult):
            if result.decode is not None:
                super().process_batch_result(iteration.decode_batch, result.decode)
                processed.append(iteration.decode_batch)
            for cohort, prefill in result.finished:
                super().process_batch_result(cohort.batch, prefill)
                processed.append(cohort.batch)
                self._layered.finish(cohort)
        else:
            super().process_batch_result(batch, result)
            processed.append(batch)
        if self._clock is not None:
            seconds = self._clock.stop()  # SGLang's result processing waited for the device
            if seconds is not None:
                decode_rows = batch.batch_size() if batch.forward_mode.is_decode() else 0
                self._measurements.append(Measurement(decode_rows, iteration.token_layers if iteration else 0,
                                                      self._layered.num_layers, seconds))
        if self._observer is not None:
            self._observer.end(processed)

    # -- bookkeeping SGLang does over "all in-flight requests" must see the cohorts too --------------
    def _collect_inflight_batches(self):
        batches = super()._collect_inflight_batches()
        if self._layered is not None:
            # Cohorts mid-layers, and one that sampled last iteration but has not merged into decode yet.
            batches = [*batches, *(c.batch for c in (*self._layered.cohorts, *self._layered.finished))]
        return batches

    def pause_generation(self, recv_req):
        super().pause_generation(recv_req)
        if self._layered is not None and recv_req.mode == "retract":
            # SGLang retracts its running and last prefill batches (their KV recomputed on resume, e.g. under new
            # weights); cohorts mid-layers or about to join decode are ours to retract the same way.
            for req in self._layered.retract_in_flight():
                self._add_request_to_queue(req)

    def abort_request(self, recv_req):
        if self._layered is None:
            return super().abort_request(recv_req)
        stages = self._layered.stage_of(recv_req.rid or "", recv_req.abort_all)
        super().abort_request(recv_req)  # queued: removed; in flight (cohorts included): marked to finish
        # A request whose chunk is mid-layers is held aside from SGLang's chunked_req; mark it the way SGLang marks
        # an aborted chunked request, so SGLang ends it once the chunk completes and the request is handed back.
        for req in self._layered.held_chunked_reqs():
            if recv_req.abort_all or req.rid.startswith(recv_req.rid or ""):
                self._pending_chunked_abort_req = req
        cancelled = set(self._layered.cancel_aborted())
        if self._observer is not None and stages:
            self._observer.note_aborts([{"rid": rid, "stage": stage, "freed_now": rid in cancelled}
                                        for rid, stage in stages])

    def get_internal_state(self, recv_req):
        out = super().get_internal_state(recv_req)
        if self._layered is not None:
            out.internal_state["sgl_layered"] = self._layered.pool_state()
        return out

    def is_fully_idle(self, *args, **kwargs) -> bool:
        if self._layered is not None and self._layered.cohorts:
            return False
        return super().is_fully_idle(*args, **kwargs)


def _input_problem(ids, vocab_size: int):
    if len(ids) == 0:
        return "The prompt is empty: send at least one input token."
    low, high = min(ids), max(ids)
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        return f"Input token id {bad} is outside the model's vocabulary (ids 0..{vocab_size - 1})."
    return None
