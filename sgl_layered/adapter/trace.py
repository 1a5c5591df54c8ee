"""Per-iteration trace: one JSON line per forward iteration, in layered and in stock modes alike.

Fields: iter, start / forward_end / end (wall-clock seconds: forward launched, forward returned, results
processed), mode, decode_rows, and prefill: one entry per prompt piece with its request ids, new-token
count and the layer range [start, end) it ran ([0, num_layers) for a stock prefill or chunk); finished:
ids of the requests that finished in this iteration.
"""

from __future__ import annotations

import json
import time
from typing import Optional


def describe_stock_batch(batch, num_layers: int) -> dict:
    mode = batch.forward_mode
    if mode.is_decode():
        return {"mode": "decode", "decode_rows": batch.batch_size(), "prefill": []}
    if mode.is_mixed():
        decoding = set(id(r) for r in (batch.decoding_reqs or []))
        prompt = [r for r in batch.reqs if id(r) not in decoding]
        return {"mode": "mixed", "decode_rows": len(decoding), "prefill": [{
            "rids": [r.rid for r in prompt], "tokens": int(batch.extend_num_tokens) - len(decoding),
            "layers": [0, num_layers]}]}
    if mode.is_extend():
        return {"mode": "prefill", "decode_rows": 0, "prefill": [{
            "rids": [r.rid for r in batch.reqs], "tokens": int(batch.extend_num_tokens),
            "layers": [0, num_layers]}]}
    return {"mode": str(mode.name).lower(), "decode_rows": 0, "prefill": []}


def describe_layered(iteration) -> dict:
    piece, cohort = iteration.piece, iteration.cohort
    rows = iteration.decode_batch.batch_size() if iteration.decode_batch is not None else 0
    return {"mode": "layered", "decode_rows": rows, "prefill": [{
        "rids": cohort.rids, "tokens": piece.tokens, "layers": list(piece.layers),
        "cohort": cohort.cohort_id, "final": piece.final}]}


class TraceWriter:
    def __init__(self, path: str, num_layers: int):
        self.num_layers = num_layers
        self._file = open(path, "a", buffering=1)
        self._pending: Optional[dict] = None

    def begin(self, iteration_no: int, summary: dict) -> None:
        self._pending = {"iter": iteration_no, "start": time.time(), "num_layers": self.num_layers, **summary}

    def forward_done(self) -> None:
        if self._pending is not None:
            self._pending["forward_end"] = time.time()

    def end(self, finished=()) -> None:
        if self._pending is None:
            return
        self._pending["end"] = time.time()
        self._pending["finished"] = list(finished)
        self._file.write(json.dumps(self._pending) + "\n")
        self._pending = None

    def close(self) -> None:
        self._file.close()
