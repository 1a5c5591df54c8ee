"""Per-iteration trace: one JSON line per forward iteration, in layered and in stock modes alike.

Fields: iter, start / forward_end / end (wall-clock seconds: batch launched, run_batch returned, results
processed), mode, decode_rows, and prefill: one entry per prompt piece with its request ids, new-token
count (and per request, req_tokens) and the layer range [start, end) it ran ([0, num_layers) for a stock
prefill or chunk); finished: ids of the requests that finished in this iteration. With expert accounting:
experts (per-layer rows / distinct experts, loaded and prompt-attributable bytes) and, per piece,
expert_bytes (its share of the prompt-attributable bytes). In layered mode, aborts: the aborts received
since the previous iteration, each with the request's stage then (queued, 'layers k/G', decode) and whether
its slots were freed at once (a cohort whose requests were all aborted is dropped before its next group);
admit: the policy's admission decision of that iteration (token cap, chunk size, execution, group rule), or null;
scheduling: the waiting-queue depth, the scheduling call's time in µs (SGLang's admission included) and our
policy's share (building the view and deciding the Step).
With tensor parallelism, rank 0 writes PATH and rank r > 0 writes PATH.tp<r>, so per-rank schedules can be compared.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time


def describe_stock_batch(batch, num_layers: int) -> dict:
    mode = batch.forward_mode
    if mode.is_decode():
        return {"mode": "decode", "decode_rows": batch.batch_size(), "prefill": []}
    if mode.is_mixed():
        decoding = set(id(r) for r in (batch.decoding_reqs or []))
        prompt = [r for r in batch.reqs if id(r) not in decoding]
        lens = [n for r, n in zip(batch.reqs, batch.extend_lens) if id(r) not in decoding]
        return {"mode": "mixed", "decode_rows": len(decoding), "prefill": [{
            "rids": [r.rid for r in prompt], "tokens": int(sum(lens)), "req_tokens": lens,
            "layers": [0, num_layers]}]}
    if mode.is_extend():
        return {"mode": "prefill", "decode_rows": 0, "prefill": [{
            "rids": [r.rid for r in batch.reqs], "tokens": int(batch.extend_num_tokens),
            "req_tokens": [int(n) for n in batch.extend_lens], "layers": [0, num_layers]}]}
    return {"mode": str(mode.name).lower(), "decode_rows": 0, "prefill": []}


def describe_layered(iteration) -> dict:
    rows = iteration.decode_batch.batch_size() if iteration.decode_batch is not None else 0
    admit = dataclasses.asdict(iteration.admit) if iteration.admit is not None else None
    return {"mode": "layered", "decode_rows": rows, "admit": admit, "prefill": [{
        "rids": cohort.rids, "tokens": piece.tokens, "req_tokens": [int(n) for n in cohort.batch.extend_lens],
        "layers": list(piece.layers), "cohort": cohort.cohort_id, "final": piece.final}
        for piece, cohort in iteration.pieces]}


class TraceWriter:
    """Records are opened when a batch is launched and written when its results are processed. SGLang's
    overlap loop processes a batch's results after launching the next one, always in launch order, so open
    records wait in a FIFO queue."""

    def __init__(self, path: str, num_layers: int):
        self.num_layers = num_layers
        self._file = open(path, "a", buffering=1)
        self._open = collections.deque()
        self._notes = {}

    def note(self, **fields) -> None:
        """Events between iterations, recorded with the next iteration."""
        for key, items in fields.items():
            self._notes.setdefault(key, []).extend(items)

    def begin(self, iteration_no: int, summary: dict) -> None:
        notes, self._notes = self._notes, {}
        self._open.append({"iter": iteration_no, "start": time.time(), "num_layers": self.num_layers, **summary,
                           **notes})

    def forward_done(self) -> None:
        """run_batch returned (on a GPU with the overlap loop: the forward was launched, not finished)."""
        if self._open:
            self._open[-1]["forward_end"] = time.time()

    def end(self, finished=(), **extra) -> None:
        if not self._open:
            return
        record = self._open.popleft()
        record["end"] = time.time()
        record["finished"] = list(finished)
        record.update(extra)
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()
