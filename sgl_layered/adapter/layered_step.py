"""Layered iterations inside one SGLang scheduler process: admit, plan, run, finish a cohort."""

from __future__ import annotations

import logging
import time

import torch
from dataclasses import dataclass
from typing import Optional

from sglang.srt.managers.overlap_utils import resolve_forward_inputs
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import ForwardBatch

from sgl_layered.core.config import LayeredConfig
from sgl_layered.core.policy import PaperPolicy, Piece, SchedulerView

from . import fused_pass
from .cohort import Cohort

logger = logging.getLogger("sgl_layered")


@dataclass
class Iteration:
    piece: Piece
    cohort: Cohort
    decode_batch: Optional[object]  # ScheduleBatch in DECODE mode, or None when nothing is decoding

    @property
    def host_batch(self):
        """The batch SGLang's event loop sees for this iteration."""
        return self.decode_batch if self.decode_batch is not None else self.cohort.batch


@dataclass
class LayeredResult:
    decode: Optional[GenerationBatchResult]
    prefill: Optional[GenerationBatchResult]  # set on the cohort's last pass


class LayeredRuntime:
    def __init__(self, scheduler, config: LayeredConfig):
        self.scheduler = scheduler
        self.model_runner = scheduler.tp_worker.model_runner
        self.num_layers = int(self.model_runner.model_config.num_hidden_layers)
        config.check_layers(self.num_layers)
        self.policy = PaperPolicy(groups=config.fixed_groups, tokens_per_group=config.layered_prefill_group_tokens)
        self.cohort: Optional[Cohort] = None
        self.completed: Optional[Cohort] = None  # finished last iteration; merges into the running batch next
        self._prefill_backend = None

    # -- scheduling ---------------------------------------------------------------------------------
    def view(self, decode_rows: int) -> SchedulerView:
        cohorts = (self.cohort.state(),) if self.cohort is not None else ()
        return SchedulerView(self.num_layers, decode_rows, len(self.scheduler.waiting_queue), cohorts)

    def may_admit(self, running_batch) -> bool:
        return self.policy.may_admit(self.view(running_batch.batch_size()))

    def admit(self, batch) -> Cohort:
        groups = self.policy.partition(int(batch.extend_num_tokens), self.num_layers)
        self.cohort = Cohort(batch, groups)
        logger.debug("layered prefill: cohort %d admitted, %d requests, %d new tokens, groups %s",
                     self.cohort.cohort_id, len(batch.reqs), self.cohort.new_tokens, groups)
        return self.cohort

    def next_iteration(self, decode_batch) -> Optional[Iteration]:
        if self.cohort is None:
            return None
        rows = decode_batch.batch_size() if decode_batch is not None else 0
        plan = self.policy.plan(self.view(rows))
        (piece,) = plan.pieces  # the paper policy runs one cohort at a time
        return Iteration(piece, self.cohort, decode_batch)

    def take_completed(self):
        """The batch of a cohort that finished last iteration (SGLang merges it like a finished prefill)."""
        done, self.completed = self.completed, None
        return done.batch if done is not None else None

    # -- execution ----------------------------------------------------------------------------------
    def prefill_backend(self):
        """A second attention-backend instance whose metadata describes the cohort's prompt rows."""
        if self._prefill_backend is None:
            self._prefill_backend = self.model_runner._get_attention_backend(init_new_workspace=True)
        return self._prefill_backend

    def run(self, it: Iteration, run_decode_batch) -> LayeredResult:
        cohort = it.cohort
        if cohort.forward_batch is None:
            # What SGLang's run_batch records on a prefill batch, for its step metrics.
            cohort.batch.launch_ts = time.monotonic()
            cohort.batch.after_idle_gap = False
            resolve_forward_inputs(cohort.batch, self.scheduler.future_map)
            cohort.forward_batch = ForwardBatch.init_new(
                cohort.batch, self.model_runner, return_hidden_states_before_norm=False)
            # The preparation SGLang's eager forward gives every batch (token-count bounds, padding).
            self.model_runner._prepare_eager_forward_batch(cohort.forward_batch)
        prompt_pass = fused_pass.PromptPass(self.model_runner.model, cohort, it.piece.layers, self.prefill_backend())
        decode_result = None
        if it.decode_batch is not None:
            with fused_pass.active(prompt_pass):
                decode_result = run_decode_batch(it.decode_batch)
        else:
            self.scheduler.forward_ct += 1  # a forward of its own, counted like SGLang counts forwards
            prompt_pass.run_alone()
        prompt_pass.check_complete()
        cohort.advance(it.piece.layers)
        prefill_result = self._sample_first_tokens(cohort) if it.piece.final else None
        return LayeredResult(decode_result, prefill_result)

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
        cohort.release_activations()
        cohort.forward_batch = None
        self.cohort = None
        self.completed = cohort
