"""An admitted prompt cohort: SGLang's own prefill batch, run layer group by layer group.

SGLang's scheduler admits the cohort (FCFS, prefix-cache match, KV allocation for every prompt token) and
builds its ScheduleBatch exactly as it would for an unchunked prefill. We keep that batch out of the running
batch until the last group has run: only then does it sample, enter the radix cache and join decode, so no
request can ever match a partially written KV.
"""

from __future__ import annotations

import itertools
from typing import Optional, Tuple

from sgl_layered.core.step import CohortState
from sgl_layered.runtime.stash import Activations

_ids = itertools.count()


class Cohort:
    def __init__(self, batch, groups: Tuple[Tuple[int, int], ...]):
        self.cohort_id = next(_ids)
        self.batch = batch  # SGLang ScheduleBatch in EXTEND mode, KV already allocated
        self.groups = groups
        self.next_group = 0
        self.new_tokens = int(batch.extend_num_tokens)
        self.forward_batch = None  # built on the first pass, reused by every later pass
        self.input_embeds = None  # the prompt's embeddings where the requests brought their own (input_embeds)
        self.backend = None  # the attention-backend instance planned for its prompt rows, while in flight
        self.stash: Optional[Activations] = None  # activations between passes
        self.logits = None  # LogitsProcessorOutput of the last pass
        # Chunk x layer hybrid: the request SGLang is chunking, held aside while this chunk is mid-layers (SGLang
        # checkpoints its chunked request into the radix cache on every scheduling call, assuming one iteration
        # per chunk); handed back when the chunk completes.
        self.chunked_req = None

    @property
    def rids(self):
        return [r.rid for r in self.batch.reqs]

    def state(self) -> CohortState:
        return CohortState(self.cohort_id, self.new_tokens, self.groups, self.next_group)

    def advance(self, layers: Tuple[int, int]) -> None:
        if layers != self.groups[self.next_group]:
            raise RuntimeError(f"cohort {self.cohort_id} ran {layers}, expected {self.groups[self.next_group]}")
        self.next_group += 1

    def release_activations(self) -> None:
        self.stash = None
        self.logits = None
        self.input_embeds = None
