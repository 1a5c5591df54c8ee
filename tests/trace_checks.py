"""Checks on the per-iteration trace that prove the layered schedule."""

from __future__ import annotations

import json
from collections import defaultdict


def read(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_layered_schedule(rows, num_layers, expected_groups, count_check=True):
    """Each cohort gets exactly `expected_groups(tokens)` passes covering layers 0..N-1 once, in order, in
    consecutive iterations; and every iteration carries every running decode request (no stall).
    Returns the number of layered iterations that also carried decode rows."""
    pieces = defaultdict(list)
    for row in rows:
        if row["mode"] == "layered":
            for piece in row["prefill"]:
                pieces[piece["cohort"]].append((row["iter"], piece))
    assert pieces, "no layered passes in the trace"
    joined = {}  # rid -> iteration whose results made it a decoding request
    for cohort, passes in pieces.items():
        ranges = [tuple(p["layers"]) for _, p in passes]
        covered = [i for lo, hi in ranges for i in range(lo, hi)]
        assert covered == list(range(num_layers)), f"cohort {cohort} covered layers {ranges}"
        tokens = passes[0][1]["tokens"]
        if count_check:
            assert len(passes) == expected_groups(tokens), f"cohort {cohort} ({tokens} tokens) ran {len(passes)} passes"
        iters = [it for it, _ in passes]
        assert iters == list(range(iters[0], iters[0] + len(iters))), f"cohort {cohort} passes not consecutive: {iters}"
        assert [p["final"] for _, p in passes] == [False] * (len(passes) - 1) + [True]
        for rid in passes[-1][1]["rids"]:
            joined[rid] = iters[-1]
    finished = {rid: row["iter"] for row in rows for rid in row.get("finished", [])}
    assert set(finished) == set(joined), ("every request must join decode exactly once and finish: "
                                          f"finished only {sorted(set(finished) - set(joined))}, "
                                          f"joined only {sorted(set(joined) - set(finished))}")
    fused = 0
    for row in rows:
        t = row["iter"]
        running = sum(1 for rid, k in joined.items() if k < t <= finished[rid])
        assert row["decode_rows"] == running, f"iteration {t} carried {row['decode_rows']} of {running} decode rows"
        if row["mode"] == "layered" and row["decode_rows"] > 0:
            fused += 1
    return fused
