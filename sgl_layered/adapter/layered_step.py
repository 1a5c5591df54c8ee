"""Layered iterations inside one SGLang scheduler process: one policy decision per iteration, then admit, run and
finish prompt cohorts."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from sglang.srt.beam_search.logits_capture import capture_pre_sample_logits
from sglang.srt.eplb.expert_distribution import get_global_expert_distribution_recorder
from sglang.srt.managers.overlap_utils import resolve_forward_inputs
from sglang.srt.managers.schedule_batch import FINISH_ABORT, retract_all
from sglang.srt.managers.scheduler import _make_abort_req
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.mem_cache.common import release_kv_cache
from sglang.srt.model_executor.forward_batch_info import ForwardBatch

from sgl_layered.core.config import LayeredConfig
from sgl_layered.core.policies import make_policy
from sgl_layered.core.step import Admit, Measurement, Piece, SchedulerView, Step, Waiting, token_layers

from . import cost_profile, fused_pass
from .admission import adder_with_limits
from .cohort import Cohort

logger = logging.getLogger("sgl_layered")

# Waiting requests whose prompt lengths the view sums (a queue of many tiny prompts reads as at most this many).
WAITING_SUMMARY = 64


@dataclass
class Iteration:
    pieces: List[Tuple[Piece, Cohort]]
    decode_batch: Optional[object]  # ScheduleBatch in DECODE mode, or None when nothing is decoding
    admit: Optional[Admit] = None  # the Step's admission (for the trace)

    @property
    def host_batch(self):
        """The batch SGLang's event loop sees for this iteration."""
        return self.decode_batch if self.decode_batch is not None else self.pieces[0][1].batch

    @property
    def token_layers(self) -> int:
        return token_layers([p for p, _ in self.pieces])


@dataclass
class LayeredResult:
    decode: Optional[GenerationBatchResult]
    finished: List[Tuple[Cohort, GenerationBatchResult]] = field(default_factory=list)  # cohorts that sampled


class LayeredRuntime:
    def __init__(self, scheduler, config: LayeredConfig):
        self.scheduler = scheduler
        self.model_runner = scheduler.tp_worker.model_runner
        model_config = self.model_runner.model_config
        self.num_layers = int(model_config.num_hidden_layers)
        config.check_layers(self.num_layers)
        dtype_bytes = self.model_runner.dtype.itemsize
        on_cpu = str(self.model_runner.device).startswith("cpu")
        model = cost_profile.cost_model(
            config, model_config.hf_config, dtype_bytes, int(scheduler.server_args.tp_size), on_cpu,
            "cpu" if on_cpu else torch.cuda.get_device_name())
        self.policy = make_policy(config, int(model_config.hidden_size), dtype_bytes,
                                  model.seconds if model is not None else None,
                                  model.layer_costs(config.layered_prefill_group_tokens) if model is not None else None)
        self.step: Optional[Step] = None  # this iteration's decision, made once SGLang knows its decode batch
        self.policy_ns = 0
        self._chunking: Optional[Admit] = None  # the admission SGLang's chunked request started with
        self.cohorts: List[Cohort] = []
        self.finished: List[Cohort] = []  # ran their last group last iteration; merge into the running batch next
        # One attention-backend instance per cohort that can be in flight, for its prompt rows: each cohort's
        # metadata is planned once, before its first forward, and serves all its groups (its KV slots and page
        # table are fixed at admission). Built now, at start-up, beside SGLang's own backends.
        self._free_backends = [self._new_prompt_backend() for _ in range(self.policy.max_cohorts)]

    # -- the decision -------------------------------------------------------------------------------
    def view(self, running_batch) -> SchedulerView:
        """The scheduler's state as plain data, identical on every rank (SGLang keeps queues and batches identical
        across ranks). The waiting queue is summarised at a cost that does not grow with it: its length, its head,
        and the prompt lengths of its first WAITING_SUMMARY requests up to what one admission can take."""
        s = self.scheduler
        queue, chunked = s.waiting_queue, s.chunked_req
        head = chunked if chunked is not None else (queue[0] if queue else None)
        limit = int(s.max_prefill_tokens)
        admissible = len(chunked.origin_input_ids) - min(int(chunked.prefix_len), len(chunked.origin_input_ids)) \
            if chunked is not None else 0
        for req in itertools.islice(queue, WAITING_SUMMARY):
            if admissible >= limit:
                break
            admissible += len(req.origin_input_ids)
        reqs = running_batch.reqs
        return SchedulerView(
            num_layers=self.num_layers, decode_rows=len(reqs),
            decode_context=sum(len(r.origin_input_ids) + len(r.output_ids) for r in reqs),
            cohorts=tuple(c.state() for c in self.cohorts),
            waiting=Waiting(len(queue) + (chunked is not None), len(head.origin_input_ids) if head else 0,
                            min(admissible, limit)),
            # A chunk mid-layers: SGLang continues that request's chunks first, once this chunk is done.
            admission_open=not self.held_chunked_reqs(),
            chunking=self._chunking if chunked is not None else None)

    def schedule(self, running_batch) -> Step:
        """The iteration's one policy call (SGLang's _should_defer_prefill seam: the decode batch is final there)."""
        self._poll_grammars()
        start = time.perf_counter_ns()
        self.step = self.policy.schedule(self.view(running_batch))
        self.policy_ns = time.perf_counter_ns() - start  # view + decision, for the trace
        return self.step

    def _poll_grammars(self) -> None:
        """SGLang moves requests whose grammar has compiled into the waiting queue only inside its admission, which
        an iteration without admission skips (grammar requests hung until another request arrived): poll every
        iteration, as SGLang's admission does, so the policy sees them. SGLang's poll syncs readiness across TP
        ranks, and every rank calls it here alike. A request whose grammar failed to compile (or that was aborted
        while compiling) is answered now, as SGLang answers a request aborted while queued, rather than after
        waiting for admission and a prefill."""
        grammars = self.scheduler.grammar_manager
        if not grammars.has_waiting_grammars():
            return
        for req in grammars.get_ready_grammar_requests():
            if isinstance(req.to_finish, FINISH_ABORT):
                req.finished_reason, req.to_finish = req.to_finish, None
                self.scheduler._release_aborted_request(req)
                self.scheduler.send_abort_output(_make_abort_req(req, req.finished_reason.to_json()), req)
            else:
                self.scheduler._add_request_to_queue(req)

    def make_prefill_adder(self, adder_class):
        """SGLang's PrefillAdder with the admission limits of this iteration's Step: at most `token_cap` new tokens,
        chunks of `chunk_tokens` (chunked execution or the chunk x layer hybrid)."""
        admit = self.step.admit if self.step is not None else None
        if admit is None:
            return adder_class
        return adder_with_limits(adder_class, admit.token_cap, admit.chunk_tokens)

    def observe(self, measurement: Measurement) -> None:
        """Feedback from the TP leader's measurement, received by every rank through SGLang's request broadcast."""
        self.policy.observe(measurement)

    def held_chunked_reqs(self) -> list:
        return [c.chunked_req for c in self.cohorts if c.chunked_req is not None]

    # -- admission and the iteration ----------------------------------------------------------------
    def admit(self, batch) -> Cohort:
        """SGLang's admission built this prefill batch under the Step's limits: it becomes a cohort, split by the
        Step's rule now that its new-token count is known."""
        admit = self.step.admit if self.step is not None else None
        if admit is None:
            raise RuntimeError("SGLang admitted a prefill batch in an iteration whose Step admits nothing")
        cohort = Cohort(batch, admit.groups.split(int(batch.extend_num_tokens), self.num_layers))
        chunked = self.scheduler.chunked_req
        if chunked is not None and any(r is chunked for r in batch.reqs):
            # The chunk runs its layer groups first; SGLang gets the request back (and chunks on) when it finishes.
            cohort.chunked_req, self.scheduler.chunked_req = chunked, None
            self._chunking = admit
        self.cohorts.append(cohort)
        logger.debug("layered prefill: cohort %d admitted, %d requests, %d new tokens, groups %s",
                     cohort.cohort_id, len(batch.reqs), cohort.new_tokens, cohort.groups)
        return cohort

    def iteration(self, decode_batch, admitted: Optional[Cohort]) -> Optional[Iteration]:
        if self.step is None:
            raise RuntimeError("no scheduling decision this iteration: SGLang did not call _should_defer_prefill")
        by_id = {c.cohort_id: c for c in self.cohorts}
        pieces = [(p, by_id[p.cohort_id]) for p in self.step.pieces]
        if admitted is not None:
            pieces.append((self.step.admitted_piece(admitted.cohort_id, admitted.new_tokens, admitted.groups),
                           admitted))
        admit, self.step = self.step.admit, None
        return Iteration(pieces, decode_batch, admit) if pieces else None

    def take_finished(self):
        """The batch of the cohort that finished last iteration, merged by SGLang like a finished prefill."""
        done, self.finished = self.finished, []
        if len(done) > 1:
            raise RuntimeError("two cohorts finished in one iteration; the pipeline keeps them a group apart")
        return done[0].batch if done else None

    # -- execution ----------------------------------------------------------------------------------
    def _new_prompt_backend(self):
        """An attention-backend instance for a cohort's prompt rows. It shares SGLang's workspace buffer, as SGLang's
        own hybrid and two-batch-overlap backends do: the prompt rows' attention runs in the same forward, on the
        same stream, never at the same time as the decode rows'. SGLang leaves its new-workspace flag set when it
        builds a backend: restored."""
        runner = self.model_runner
        saved = runner.init_new_workspace
        try:
            return runner._get_attention_backend(init_new_workspace=False)
        finally:
            runner.init_new_workspace = saved

    def _prepare(self, cohort: Cohort) -> None:
        """Before the cohort's first forward: its forward batch, its own attention backend with the prompt rows'
        metadata planned (FlashInfer's plan copies to the host and would drain the queue mid-forward)."""
        if cohort.forward_batch is not None:
            return
        # What SGLang's run_batch records on a prefill batch, for its step metrics.
        cohort.batch.launch_ts = time.monotonic()
        cohort.batch.after_idle_gap = False
        resolve_forward_inputs(cohort.batch, self.scheduler.future_map)
        cohort.forward_batch = ForwardBatch.init_new(
            cohort.batch, self.model_runner, return_hidden_states_before_norm=False)
        # The preparation SGLang's eager forward gives every batch (token-count bounds, padding).
        self.model_runner._prepare_eager_forward_batch(cohort.forward_batch)
        # The embeddings SGLang's extend forward would start from when requests bring input_embeds / replace_embeds.
        cohort.input_embeds = self.model_runner._extend_forward_kwargs(cohort.forward_batch, None).get("input_embeds")
        if not self._free_backends:
            raise RuntimeError(f"more cohorts in flight than the policy's maximum ({self.policy.max_cohorts})")
        cohort.backend = self._free_backends.pop()
        cohort.backend.init_forward_metadata(cohort.forward_batch)

    def run(self, it: Iteration, run_decode_batch) -> LayeredResult:
        passes = []
        for piece, cohort in it.pieces:
            self._prepare(cohort)
            passes.append(fused_pass.PieceRunner(self.model_runner.model, cohort, piece.layers))
        decode_result = None
        if it.decode_batch is not None:
            with fused_pass.active(passes):
                decode_result = run_decode_batch(it.decode_batch)
        else:
            # A forward of its own, counted like SGLang counts forwards and seen by SGLang's expert distribution
            # recorder as one forward pass (the model runner opens one around each of its forwards).
            self.scheduler.forward_ct += 1
            self.model_runner.forward_pass_id += 1
            with get_global_expert_distribution_recorder().with_forward_pass(
                    self.model_runner.forward_pass_id, passes[0].cohort.forward_batch):
                for p in sorted(passes, key=lambda p: p.start):
                    p.run_alone()
        result = LayeredResult(decode_result)
        for p, (piece, cohort) in zip(passes, it.pieces):
            p.check_complete()
            cohort.advance(piece.layers)
            if piece.final:
                result.finished.append((cohort, self._sample_first_tokens(cohort)))
        return result

    def _sample_first_tokens(self, cohort: Cohort) -> GenerationBatchResult:
        """What SGLang's TP worker does with a prefill forward's logits (beam leaders' logits kept before sampling,
        placeholder ids and logprobs only for scoring requests), then what the scheduler does after a prefill."""
        batch, fb, logits = cohort.batch, cohort.forward_batch, cohort.logits
        result = GenerationBatchResult(logits_output=logits, can_run_cuda_graph=False)
        capture_pre_sample_logits(batch, fb, logits)
        if fb.is_prefill_only:
            result.next_token_ids = torch.zeros(len(fb.seq_lens), dtype=torch.long, device=fb.input_ids.device)
            if fb.return_logprob and logits.next_token_logits is not None:
                self.model_runner.compute_logprobs_only(logits, fb)
        else:
            result.next_token_ids = self.model_runner.sample(logits, fb)
        if batch.return_logprob or batch.return_hidden_states:
            result.extend_input_len_per_req = list(batch.extend_lens)
        if batch.return_logprob:
            result.extend_logprob_start_len_per_req = batch.extend_logprob_start_lens
        # As SGLang does after any prefill forward: relay the sampled tokens as the requests' next inputs.
        batch.forward_iter = self.scheduler.forward_ct
        self.scheduler._relay_forward_payload(batch, batch.req_pool_indices, result)
        batch.input_ids = None
        self.scheduler._copy_auxiliary_output_to_cpu(batch, result)
        return result

    def finish(self, cohort: Cohort) -> None:
        """The cohort ran its last group and sampled: it merges into the running batch next iteration."""
        if cohort.chunked_req is not None:  # its chunk's KV is complete: SGLang checkpoints it, chunks on
            self.scheduler.chunked_req, cohort.chunked_req = cohort.chunked_req, None
        self._retire(cohort)
        self.finished.append(cohort)

    def _retire(self, cohort: Cohort) -> None:
        """The cohort runs no further group: drop its activations and forward batch, hand its backend back."""
        cohort.release_activations()
        cohort.forward_batch = None
        if cohort.backend is not None:
            self._free_backends.append(cohort.backend)
            cohort.backend = None
        self.cohorts.remove(cohort)

    # -- aborts -------------------------------------------------------------------------------------
    def stage_of(self, rid_prefix: str, abort_all: bool = False) -> List[Tuple[str, str]]:
        """Where the matching requests stand (for the trace): 'queued', 'layers k/G' (k groups done) or
        'decode'. SGLang matches abort ids by prefix, so do we."""
        def hit(req):
            return abort_all or req.rid.startswith(rid_prefix)
        found = [(r.rid, "queued") for r in self.scheduler.waiting_queue if hit(r)]
        for c in self.cohorts:
            found += [(r.rid, f"layers {c.next_group}/{len(c.groups)}") for r in c.batch.reqs if hit(r)]
        for c in self.finished:
            found += [(r.rid, "decode") for r in c.batch.reqs if hit(r)]
        running = self.scheduler.running_batch
        found += [(r.rid, "decode") for r in running.reqs if hit(r) and not r.finished()]
        return found

    def cancel_aborted(self) -> List[str]:
        """Drop every cohort whose requests were all aborted, now rather than after its remaining groups:
        its KV slots (never shared: it is not in the radix cache) and stashed activations are freed at once.
        A cohort with some live requests runs on; SGLang ends its aborted ones when it samples, as it ends
        any aborted running request. A chunk of a longer prompt (chunk x layer hybrid) also runs on: SGLang's
        own chunked-abort path ends that request when the chunk completes. Called between iterations, when no
        cohort is mid-forward."""
        cancelled = []
        for cohort in [c for c in self.cohorts if all(isinstance(r.to_finish, FINISH_ABORT) for r in c.batch.reqs)
                       and c.chunked_req is None and not any(r.inflight_middle_chunks > 0 for r in c.batch.reqs)]:
            for req in cohort.batch.reqs:
                req.finished_reason, req.to_finish = req.to_finish, None
                self.scheduler._release_aborted_request(req)
                # No checkpoint: the KV is partial and must never enter the radix cache.
                release_kv_cache(req, self.scheduler.tree_cache, checkpoint=False)
                self.scheduler.send_abort_output(_make_abort_req(req), req)
                cancelled.append(req.rid)
            self._retire(cohort)
            logger.info("layered prefill: cohort %d cancelled after %d of %d groups (all requests aborted)",
                        cohort.cohort_id, cohort.next_group, len(cohort.groups))
        return cancelled

    def retract_in_flight(self) -> list:
        """Free every cohort's KV and activations and reset its live requests for recompute, as SGLang's
        pause_generation(retract) does to its running batch; returns the requests, for the waiting queue."""
        s = self.scheduler
        # Requests SGLang itself just retracted (a cohort that ran alone is SGLang's last extend batch; a finished
        # chunk's request is SGLang's chunked request again) hold no KV any more.
        reqs = [r for c in (*self.cohorts, *self.finished) for r in c.batch.reqs if r.kv.holds_kv and not r.finished()]
        retract_all(reqs=reqs, req_to_token_pool=s.req_to_token_pool,
                    token_to_kv_pool_allocator=s.token_to_kv_pool_allocator, tree_cache=s.tree_cache,
                    hisparse_coordinator=s.hisparse_coordinator, offload_kv=False)
        for cohort in list(self.cohorts):
            cohort.chunked_req = None  # retracted with the rest; SGLang's own chunked request was reset too
            self._retire(cohort)
        self.finished, self._chunking = [], None
        if reqs:
            logger.info("layered prefill: %d requests of cohorts in flight retracted for the pause", len(reqs))
        return reqs

    def pool_state(self) -> dict:
        """KV and request-slot accounting, for leak checks: when idle, kv_available + kv_evictable equals
        kv_total and req_slots_free equals req_slots_total."""
        s = self.scheduler
        checker = getattr(s, "invariant_checker", None)
        return {
            "kv_total": int(s.max_total_num_tokens),
            "kv_available": int(s.token_to_kv_pool_allocator.available_size()),
            "kv_evictable": int(s.tree_cache.evictable_size()),
            "kv_protected": int(s.tree_cache.protected_size()),
            "req_slots_free": len(s.req_to_token_pool.free_slots),
            "req_slots_total": int(s.req_to_token_pool.size),
            "cohorts_in_flight": len(self.cohorts),
            "stash_bytes": sum(c.stash.nbytes() for c in self.cohorts if c.stash is not None),
            "waiting": len(s.waiting_queue),
            "running": s.running_batch.batch_size(),
            "sglang_leak_warnings": int(getattr(checker, "count_memory_leak_warnings", 0))
            + int(getattr(checker, "count_req_pool_leak_warnings", 0)),
        }
