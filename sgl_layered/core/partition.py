"""Splitting a model's layers into contiguous groups."""

from __future__ import annotations

from typing import List, Tuple

LayerRange = Tuple[int, int]  # [start, end), 0-based


def split_layers(num_layers: int, groups: int) -> List[LayerRange]:
    """`groups` contiguous ranges covering 0..num_layers-1 once, sizes differing by at most one.

    Earlier groups take the extra layers, so the cohort's last (sampling) iteration is never the heaviest.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 1 <= groups <= num_layers:
        raise ValueError(f"groups must be in 1..{num_layers}, got {groups}")
    base, extra = divmod(num_layers, groups)
    ranges, start = [], 0
    for g in range(groups):
        end = start + base + (1 if g < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def paper_group_count(new_tokens: int, num_layers: int, tokens_per_group: int = 512) -> int:
    """The paper's rule: G = clamp(ceil(L / tokens_per_group), 1, N) for a cohort of L new tokens."""
    groups = -(-max(new_tokens, 0) // tokens_per_group)
    return max(1, min(groups, num_layers))
