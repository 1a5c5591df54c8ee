"""Which regime a run exercised: how many requests were decoding while prompt work ran.

Layered prefill's case rests on prompts arriving while a decode batch runs (each chunk of a chunked prefill
then reloads the experts the decode rows do not already touch). A run whose prompts mostly ran beside an empty
or tiny decode batch says little about that case, so every frontier table shows these two numbers.
"""

from __future__ import annotations

from typing import Iterable, List

from .expert_traffic import counted_tokens


def regime(rows: Iterable[dict], batch: int = 16) -> dict:
    """From a run's trace rows: the mean number of decode rows over iterations that carried prompt rows, and the
    share of prompt tokens (each counted once, as it crosses layer 0) that ran beside >= `batch` decode rows."""
    beside, tokens, heavy = [], 0, 0
    for r in rows:
        if not r["prefill"]:
            continue
        beside.append(r["decode_rows"])
        t = sum(counted_tokens(p) for p in r["prefill"])
        tokens += t
        heavy += t if r["decode_rows"] >= batch else 0
    return {"decode_rows_mean": sum(beside) / len(beside) if beside else None,
            f"tokens_beside_{batch}": heavy / tokens if tokens else None}


def full_depth_prompt_tokens(row: dict) -> float:
    """An iteration's prompt work in full-depth tokens: each piece's tokens x the layers it ran ([start, end)), over
    the model's layers. A chunk of C tokens through every layer is C; a cohort of L tokens sums to L over its passes.
    It bounds the iteration's prompt compute whatever the timing noise."""
    return sum(p["tokens"] * (p["layers"][1] - p["layers"][0]) for p in row["prefill"]) / row["num_layers"]


def prompt_work(rows: Iterable[dict]) -> List[float]:
    """Full-depth prompt tokens of every iteration that carried prompt rows, in ascending order."""
    return sorted(full_depth_prompt_tokens(r) for r in rows if r["prefill"])
