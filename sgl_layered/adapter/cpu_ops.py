"""Pure-torch stand-ins for the Triton kernels SGLang's Qwen2-MoE calls outside any backend switch.

Qwen2-MoE gates its shared expert with `fused_gate_sigmoid_mul(_add)`, Triton kernels that cannot run on a
CPU. These functions compute the same thing (per token: sigmoid(hidden . gate_weight) * shared_output, in
fp32, optionally added to the routed-expert output in place). hooks.HOOKS installs them only in SGLang's CPU
engine (SGLANG_USE_CPU_ENGINE=1), so a GPU launch keeps the Triton kernels.
"""

from __future__ import annotations

import torch


def _gated(hidden_states: torch.Tensor, gate_weight: torch.Tensor, shared_output: torch.Tensor) -> torch.Tensor:
    gate = torch.sigmoid(hidden_states.float() @ gate_weight.float())
    return gate.unsqueeze(-1) * shared_output.float()


def gate_sigmoid_mul(hidden_states, gate_weight, shared_output):
    return _gated(hidden_states, gate_weight, shared_output).to(shared_output.dtype)


def gate_sigmoid_mul_add(hidden_states, gate_weight, shared_output, final_hidden_states) -> None:
    final_hidden_states.copy_(final_hidden_states.float() + _gated(hidden_states, gate_weight, shared_output))
