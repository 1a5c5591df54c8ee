"""Per-cohort choice of execution: layered (the prompt crosses the layers a group per iteration) or chunked (a
chunk of the prompt crosses every layer per iteration, SGLang's mixed chunked prefill).

Both carry the same prefill work per iteration (the policy's token-layer budget), and over a prompt's life both
compute the same token-layers. They differ in what a pass costs beyond its tokens:
  - a MoE layer loads every expert its rows touch: a chunk reloads them once per chunk, a layered pass once for
    the whole prompt (the paper's point);
  - a dense layer's weights are loaded by the decode rows anyway, and while that load bounds the layer's time
    the prompt's flops ride along for free; layering piles a long prompt onto a few layers and loses that
    ride on the others (why the paper measured layered prefill worse on a dense model).
Only a cost model that sees per-layer bytes and flops can tell these apart, so the choice asks a predictor
(`SecondsPredictor`: the roofline model shared with the simulator, with the hardware profile of the machine) for
the iterations each execution would run, and picks the one that adds less time to the decode batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

from .partition import LayerRange, split_layers


@dataclass(frozen=True)
class PromptWork:
    """Prompt rows crossing a layer range in one iteration."""

    tokens: int  # new prompt tokens in this pass
    prefix: int  # tokens already in KV before them (prefix cache, earlier chunks)
    layers: LayerRange  # [start, end)


# seconds of one iteration: (decode rows, total context tokens of the decode rows, prompt pieces) -> seconds
SecondsPredictor = Callable[[int, int, Sequence[PromptWork]], float]


@dataclass(frozen=True)
class Execution:
    kind: str  # "layered" or "chunked"
    chunk_tokens: Optional[int]  # chunked: tokens per chunk (each chunk runs all layers in one iteration)
    added_s: float  # predicted time this prompt adds to the iterations it runs in


def layered_iterations(tokens: int, groups: Tuple[LayerRange, ...]) -> Tuple[Tuple[PromptWork, ...], ...]:
    return tuple((PromptWork(tokens, 0, g),) for g in groups)


def chunked_iterations(tokens: int, chunk: int, num_layers: int) -> Tuple[Tuple[PromptWork, ...], ...]:
    return tuple((PromptWork(min(chunk, tokens - start), start, (0, num_layers)),)
                 for start in range(0, tokens, chunk))


def added_seconds(cost: SecondsPredictor, decode_rows: int, decode_context: int, iterations) -> float:
    """Time the prompt adds: each iteration with its pieces minus the same iteration without them."""
    alone = cost(decode_rows, decode_context, ())
    return sum(cost(decode_rows, decode_context, pieces) - alone for pieces in iterations)


def choose_execution(cost: SecondsPredictor, tokens: int, num_layers: int, budget_token_layers: float,
                     decode_rows: int, decode_context: int) -> Execution:
    """Layered or chunked for a cohort of `tokens` new prompt tokens, at the same per-iteration budget.

    Layered splits the layers into G = ceil(tokens * N / budget) groups (at most N); chunked runs chunks of
    budget / N tokens through every layer. A prompt within one iteration's budget runs whole either way. Ties go
    to layered (the paper's schedule)."""
    chunk = int(budget_token_layers // num_layers)
    if chunk < 1 or tokens <= chunk:  # no budget left (decode alone fills the target) or it fits whole
        return Execution("layered", None, 0.0)
    groups = min(num_layers, max(1, -(-tokens * num_layers // max(int(budget_token_layers), 1))))
    layered = added_seconds(cost, decode_rows, decode_context,
                            layered_iterations(tokens, tuple(split_layers(num_layers, groups))))
    chunked = added_seconds(cost, decode_rows, decode_context, chunked_iterations(tokens, chunk, num_layers))
    if chunked < layered:
        return Execution("chunked", chunk, chunked)
    return Execution("layered", None, layered)
