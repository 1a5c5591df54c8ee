"""Layered iterations inside one SGLang scheduler process: admit, plan, run and finish prompt cohorts."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from sglang.srt.managers.overlap_utils import resolve_forward_inputs
from sglang.srt.managers.schedule_batch import FINISH_ABORT
from sglang.srt.managers.scheduler import _make_abort_req
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.mem_cache.common import release_kv_cache
from sglang.srt.model_executor.forward_batch_info import ForwardBatch

from sgl_layered.core.adaptive import AdaptivePolicy, Switches
from sgl_layered.core.config import SWITCHES, LayeredConfig
from sgl_layered.core.policy import PaperPolicy, Piece, SchedulerView

from . import cost_profile, fused_pass
from .cohort import Cohort

logger = logging.getLogger("sgl_layered")


@dataclass
class Iteration:
    pieces: List[Tuple[Piece, Cohort]]
    decode_batch: Optional[object]  # ScheduleBatch in DECODE mode, or None when nothing is decoding

    @property
    def host_batch(self):
        """The batch SGLang's event loop sees for this iteration."""
        return self.decode_batch if self.decode_batch is not None else self.pieces[0][1].batch

    @property
    def token_layers(self) -> int:
        return sum(p.tokens * (p.layers[1] - p.layers[0]) for p, _ in self.pieces)


@dataclass
class LayeredResult:
    decode: Optional[GenerationBatchResult]
    finished: List[Tuple[Cohort, GenerationBatchResult]] = field(default_factory=list)  # cohorts that sampled


def make_policy(config: LayeredConfig, hidden_size: int, dtype_bytes: int, iteration_cost=None, layer_costs=None):
    if config.layered_prefill_policy == "paper":
        return PaperPolicy(groups=config.fixed_groups, tokens_per_group=config.layered_prefill_group_tokens)
    on = set(config.switches)
    target = config.layered_prefill_tbt_target_ms
    return AdaptivePolicy(
        tbt_target_s=target / 1e3 if target is not None else None,
        switches=Switches(**{name: name in on for name in SWITCHES}),
        tokens_per_group=config.layered_prefill_group_tokens,
        stash_budget_bytes=config.layered_prefill_stash_budget_mb * 2 ** 20,
        stash_bytes_per_token=2 * hidden_size * dtype_bytes,  # hidden + residual per prompt row
        iteration_cost=iteration_cost, layer_costs=layer_costs)


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
        self.hybrid_chunk_tokens = config.layered_prefill_chunk_tokens
        self._chunk_lent: Optional[int] = None  # the chunk size SGLang's chunked request was admitted with
        self.cohorts: List[Cohort] = []
        self.completed: List[Cohort] = []  # finished last iteration; merge into the running batch next
        self._prefill_backend = None

    # -- scheduling ---------------------------------------------------------------------------------
    def view(self, decode_batch) -> SchedulerView:
        waiting = list(self.scheduler.waiting_queue)
        chunked = self.scheduler.chunked_req
        if chunked is not None:  # a chunked prompt's next chunk waits first (hybrid mode)
            waiting.insert(0, chunked)
        head = len(waiting[0].origin_input_ids) if waiting else 0
        waiting_tokens = sum(len(r.origin_input_ids) for r in waiting)
        if chunked is not None:
            waiting_tokens -= min(int(chunked.prefix_len), len(chunked.origin_input_ids))
        reqs = decode_batch.reqs if decode_batch is not None else ()
        context = sum(len(r.origin_input_ids) + len(r.output_ids) for r in reqs)
        return SchedulerView(self.num_layers, len(reqs), len(waiting), tuple(c.state() for c in self.cohorts), head,
                             waiting_tokens, context)

    def may_admit(self, running_batch) -> bool:
        if self.held_chunked_reqs():  # SGLang continues that request's chunks first, once this chunk is done
            return False
        return self.policy.may_admit(self.view(running_batch))

    def held_chunked_reqs(self) -> list:
        return [c.chunked_req for c in self.cohorts if c.chunked_req is not None]

    def admission(self, running_batch) -> Tuple[Optional[int], Optional[int]]:
        """(token cap, chunk size) for SGLang's admission call. The chunk size: the policy's, when it chooses
        chunked execution; else the hybrid's (--layered-prefill-chunk-tokens); a request SGLang is still chunking
        keeps the size it was admitted with."""
        view = self.view(running_batch)
        decide = getattr(self.policy, "admission", None)
        if decide is not None:
            a = decide(view)
            cap, chunk = a.token_cap, a.chunk_tokens or self.hybrid_chunk_tokens
        else:
            cap, chunk = None, self.hybrid_chunk_tokens
        if chunk is None and (self.scheduler.chunked_req is not None or self.held_chunked_reqs()):
            chunk = self._chunk_lent
        self._chunk_lent = chunk or self._chunk_lent
        return cap, chunk

    def admit(self, batch, running_batch) -> Cohort:
        groups = self.policy.partition(int(batch.extend_num_tokens), self.num_layers, self.view(running_batch))
        cohort = Cohort(batch, groups)
        chunked = self.scheduler.chunked_req
        if chunked is not None and any(r is chunked for r in batch.reqs):
            cohort.chunked_req, self.scheduler.chunked_req = chunked, None
        self.cohorts.append(cohort)
        logger.debug("layered prefill: cohort %d admitted, %d requests, %d new tokens, groups %s",
                     cohort.cohort_id, len(batch.reqs), cohort.new_tokens, groups)
        return cohort

    def next_iteration(self, decode_batch) -> Optional[Iteration]:
        if not self.cohorts:
            return None
        plan = self.policy.plan(self.view(decode_batch))
        by_id = {c.cohort_id: c for c in self.cohorts}
        return Iteration([(p, by_id[p.cohort_id]) for p in plan.pieces], decode_batch)

    def take_completed(self):
        """The batch of the cohort that finished last iteration, merged by SGLang like a finished prefill."""
        done, self.completed = self.completed, []
        if len(done) > 1:
            raise RuntimeError("two cohorts finished in one iteration; the pipeline keeps them a group apart")
        return done[0].batch if done else None

    def observe(self, decode_rows: int, token_layers: int, seconds: float) -> None:
        observe = getattr(self.policy, "observe", None)
        if observe is not None:
            observe(decode_rows, token_layers, self.num_layers, seconds)

    # -- execution ----------------------------------------------------------------------------------
    def prefill_backend(self):
        """A second attention-backend instance whose metadata describes the prompt rows."""
        if self._prefill_backend is None:
            self._prefill_backend = self.model_runner._get_attention_backend(init_new_workspace=True)
        return self._prefill_backend

    def _prepare(self, cohort: Cohort) -> None:
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

    def run(self, it: Iteration, run_decode_batch) -> LayeredResult:
        passes = []
        for piece, cohort in it.pieces:
            self._prepare(cohort)
            passes.append(fused_pass.PromptPass(self.model_runner.model, cohort, piece.layers, self.prefill_backend()))
        decode_result = None
        if it.decode_batch is not None:
            with fused_pass.active(passes):
                decode_result = run_decode_batch(it.decode_batch)
        else:
            self.scheduler.forward_ct += 1  # a forward of its own, counted like SGLang counts forwards
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
        batch, fb, logits = cohort.batch, cohort.forward_batch, cohort.logits
        result = GenerationBatchResult(logits_output=logits, can_run_cuda_graph=False)
        if fb.is_prefill_only:  # scoring requests: SGLang returns placeholder ids and no sampling
            result.next_token_ids = torch.zeros(len(fb.seq_lens), dtype=torch.long, device=fb.input_ids.device)
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
        if cohort.chunked_req is not None:  # its chunk's KV is complete: SGLang checkpoints it, chunks on
            self.scheduler.chunked_req, cohort.chunked_req = cohort.chunked_req, None
        cohort.release_activations()
        cohort.forward_batch = None
        self.cohorts.remove(cohort)
        self.completed.append(cohort)

    # -- aborts -------------------------------------------------------------------------------------
    def stage_of(self, rid_prefix: str, abort_all: bool = False) -> List[Tuple[str, str]]:
        """Where the matching requests stand (for the trace): 'queued', 'layers k/G' (k groups done) or
        'decode'. SGLang matches abort ids by prefix, so do we."""
        def hit(req):
            return abort_all or req.rid.startswith(rid_prefix)
        found = [(r.rid, "queued") for r in self.scheduler.waiting_queue if hit(r)]
        for c in self.cohorts:
            found += [(r.rid, f"layers {c.next_group}/{len(c.groups)}") for r in c.batch.reqs if hit(r)]
        for c in self.completed:
            found += [(r.rid, "decode") for r in c.batch.reqs if hit(r)]
        running = self.scheduler.running_batch
        found += [(r.rid, "decode") for r in running.reqs if hit(r) and not r.finished()]
        return found

    def cancel_aborted(self) -> List[str]:
        """Drop every cohort whose requests were all aborted, now rather than after its remaining groups:
        its KV slots (never shared: it is not in the radix cache) and stashed activations are freed at once.
        A cohort with some live requests runs on; SGLang ends its aborted ones when it samples, as it ends
        any aborted running request. A chunk of a longer prompt (chunk x layer hybrid) also runs on: SGLang's
        own chunked-abort path ends that request when the chunk completes. Called between iterations, when no cohort is mid-forward."""
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
            cohort.release_activations()
            cohort.forward_batch = None
            self.cohorts.remove(cohort)
            logger.info("layered prefill: cohort %d cancelled after %d of %d groups (all requests aborted)",
                        cohort.cohort_id, cohort.next_group, len(cohort.groups))
        return cancelled

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
