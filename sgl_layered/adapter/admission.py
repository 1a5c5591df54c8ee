"""SGLang's admission under a Step's limits.

SGLang builds its PrefillAdder from the scheduler's per-batch token limit and chunk size on every admission call,
through the `get_prefill_adder_class` seam. Handing it an adder factory with this iteration's limits keeps SGLang's
own attributes untouched (they were once rewritten and restored around the call).
"""

from __future__ import annotations

import inspect
from typing import Optional

# The PrefillAdder parameters the Step's limits replace (hooks.py lists them; the drift test checks the signature).
TOKEN_LIMIT, CHUNK_SIZE = "rem_input_tokens", "rem_chunk_tokens"


def adder_with_limits(adder_class, token_cap: Optional[int], chunk_tokens: Optional[int]):
    """A callable SGLang can use as its adder class: at most `token_cap` new tokens (never more than SGLang's own
    limit), and chunks of `chunk_tokens` (when set) instead of SGLang's chunk size."""
    signature = inspect.signature(adder_class)

    def make(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        if token_cap is not None:
            bound.arguments[TOKEN_LIMIT] = max(1, min(int(bound.arguments[TOKEN_LIMIT]), token_cap))
        if chunk_tokens is not None:
            bound.arguments[CHUNK_SIZE] = chunk_tokens
        return adder_class(*bound.args, **bound.kwargs)

    return make
