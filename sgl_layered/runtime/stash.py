"""A cohort's activations between layered passes.

After a group's last layer the cohort's rows leave the forward as an (output, residual) pair plus the
residual-update rule the next layer must apply (see SGLang's layer-boundary residual streams). The pair is
kept here until the cohort's next pass, then spliced back in front of the decode rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class Activations:
    hidden: torch.Tensor  # [rows, hidden]
    residual: Optional[torch.Tensor]  # None: the stack has not started (embeddings, before layer 0)
    update: Any = None  # the producer's residual update (opaque to us); None before layer 0

    @property
    def rows(self) -> int:
        return self.hidden.shape[0]

    def nbytes(self) -> int:
        n = self.hidden.numel() * self.hidden.element_size()
        if self.residual is not None:
            n += self.residual.numel() * self.residual.element_size()
        return n


def join(first: Activations, second: Activations) -> Activations:
    """Rows of `first` followed by rows of `second`, for one fused pass through a layer."""
    if (first.residual is None) != (second.residual is None):
        raise RuntimeError("cannot fuse rows at different depths: one side has not entered the layer stack")
    if first.update is not None and second.update is not None and first.update != second.update:
        raise RuntimeError(f"cannot fuse rows with different residual updates: {first.update} vs {second.update}")
    residual = None if first.residual is None else torch.cat([first.residual, second.residual])
    return Activations(torch.cat([first.hidden, second.hidden]), residual, first.update or second.update)


def split(fused: Activations, first_rows: int) -> tuple:
    """Inverse of `join`: (first `first_rows` rows, the rest)."""
    def part(sl):
        return Activations(fused.hidden[sl], None if fused.residual is None else fused.residual[sl], fused.update)

    return part(slice(0, first_rows)), part(slice(first_rows, None))
