"""The schedule of arXiv 2510.08055: one cohort at a time, G fixed or from the prompt length."""

from __future__ import annotations

from typing import Optional

from .step import Admit, GroupRule, Measurement, SchedulerView, Step, check_step, next_pieces


class PaperPolicy:
    """groups=None selects the paper's rule G = clamp(ceil(L / tokens_per_group), 1, N). chunk_tokens: the chunk x
    layer hybrid (a longer prompt is admitted a chunk at a time; each chunk runs layered)."""

    name = "paper"
    max_cohorts = 1  # one cohort in flight at a time

    def __init__(self, groups: Optional[int] = None, tokens_per_group: int = 512, chunk_tokens: Optional[int] = None):
        self.rule = GroupRule(groups=groups) if groups is not None else GroupRule(tokens_per_group=tokens_per_group)
        self.chunk_tokens = chunk_tokens

    def schedule(self, view: SchedulerView) -> Step:
        # A new cohort only when none is in flight: a new arrival waits for the current cohort's last group.
        admit = None
        if not view.cohorts and view.admission_open:
            admit = view.chunking or Admit(self.rule, chunk_tokens=self.chunk_tokens)
        return check_step(view, Step(next_pieces(view), admit))

    def observe(self, measurement: Measurement) -> None:
        """The paper's rule reads no measurements."""
