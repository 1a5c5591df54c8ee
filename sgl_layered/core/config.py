"""Layered-prefill settings: one frozen dataclass, each default written once, validated with clear errors."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

from .hardware import PROFILES

# Carries the settings from the launching process into SGLang's children. Not SGL_*: SGLang renames those.
ENV_VAR = "SGLANG_LAYERED_CONFIG"
ROUTINGS = ("model", "calibrated", "forced-rows")
POLICIES = ("paper", "adaptive")
SWITCHES = ("adaptive", "pipeline", "idle_whole", "stash", "choose", "eager_join")
# Hardware profiles of the roofline cost model (core/hardware.py) the adaptive policy may predict with; "auto" picks
# by device (CPU engine, H100, H200), "none" predicts nothing (the "choose" switch then does nothing).
COST_PROFILES = ("auto", "none", *PROFILES)


class LayeredConfigError(ValueError):
    """An invalid or unsupported layered-prefill setting; the message names the setting."""


@dataclass(frozen=True)
class LayeredConfig:
    # Turn layered prefill on. Off: SGLang runs exactly as stock (the trace may still be recorded).
    enable_layered_prefill: bool = False
    # Number of contiguous layer groups a cohort's prompt is split into, or "auto": the paper's rule
    # G = clamp(ceil(L / layered_prefill_group_tokens), 1, num_layers) for a cohort of L new tokens.
    layered_prefill_groups: Union[int, str] = "auto"
    # Tokens per group for the auto rule; 512 makes one layered pass do the work of a 512-token chunk.
    layered_prefill_group_tokens: int = 512
    # Chunk x layer hybrid: a prompt longer than this many new tokens is admitted one chunk at a time (SGLang
    # allocates KV per chunk), and each chunk runs as a layered cohort. Unset: whole prompts (the paper).
    layered_prefill_chunk_tokens: Optional[int] = None
    # Scheduling policy: "paper" (arXiv 2510.08055: one cohort at a time, G from the prompt length) or
    # "adaptive" (sgl_layered/core/adaptive.py: cost-model G, pipelined cohorts, whole pass when idle, stash
    # budget; each improvement can be switched off with --layered-prefill-switches).
    layered_prefill_policy: str = "paper"
    # Adaptive policy: keep each iteration's predicted time within this target (ms), from a cost model fitted
    # online to measured iteration times. Unset: each iteration carries the paper's per-iteration prefill work.
    layered_prefill_tbt_target_ms: Optional[float] = None
    # Adaptive policy improvements to enable (comma-separated subset of adaptive,pipeline,idle_whole,stash,choose,
    # eager_join).
    # idle_whole is off by default: measured on the CPU engine, whole-prompt passes while nothing decodes block
    # admission of new arrivals and grow the next cohorts (benchmarks/README.md).
    layered_prefill_switches: str = "adaptive,pipeline,stash,choose"
    # Adaptive policy, "choose" switch: hardware profile of the roofline cost model that picks, per cohort, layered
    # or chunked execution and whether prefill bites beyond the paper's pay (core/execution.py).
    layered_prefill_cost_profile: str = "auto"
    # Adaptive policy: memory budget (MB) for the activation stash of cohorts in flight.
    layered_prefill_stash_budget_mb: float = 1024.0
    # Write one JSON line per forward iteration to this file (any mode, layered or not).
    layered_prefill_trace: Optional[str] = None
    # Count, per forward and MoE layer, the distinct experts the rows touched and the expert-weight bytes that
    # implies (any mode); reported in the trace and, with SGLang's --enable-metrics, as Prometheus counters.
    layered_prefill_expert_accounting: bool = False
    # Expert routing: "model" (the checkpoint's router), "calibrated" (a documented Zipf-skewed, token-dependent
    # routing reproducing trained-router coverage, for random-weight benchmark models; changes outputs), or
    # "forced-rows" (row r uses experts (r*k + j) mod E; for exact accounting tests).
    layered_prefill_routing: str = "model"
    # Zipf exponent of the calibrated routing (see sgl_layered/adapter/experts.py for the calibration).
    layered_prefill_routing_alpha: float = 1.3
    # SGLang's CPU engine (torch_native attention), any mode: extend attention computes only the new rows' queries.
    # SGLang computes a full-length query per request and keeps the new rows, so a decode row in a mixed batch costs
    # a prefix-length-squared attention and a chunk with a prefix recomputes the whole prefix's rows; with this, a
    # chunk or mixed batch costs on this CPU what its attention costs on a GPU backend. A benchmark setting (same
    # math, not bit-identical to SGLang's kernel call), so comparisons of chunked and layered prefill on a CPU are
    # not decided by that redundancy; off by default, and the server log says when it is on.
    layered_prefill_cpu_fast_extend: bool = False

    def __post_init__(self):
        groups = self.layered_prefill_groups
        if isinstance(groups, str):
            if groups.strip().lower() == "auto":
                object.__setattr__(self, "layered_prefill_groups", "auto")
            else:
                try:
                    groups = int(groups)
                except ValueError:
                    raise LayeredConfigError(
                        f"--layered-prefill-groups must be a positive integer or 'auto', got {groups!r}") from None
                object.__setattr__(self, "layered_prefill_groups", groups)
        if isinstance(self.layered_prefill_groups, bool) or (
            isinstance(self.layered_prefill_groups, int) and self.layered_prefill_groups < 1
        ):
            raise LayeredConfigError(
                f"--layered-prefill-groups must be >= 1 or 'auto', got {self.layered_prefill_groups!r}")
        if not isinstance(self.layered_prefill_group_tokens, int) or self.layered_prefill_group_tokens < 1:
            raise LayeredConfigError(
                "--layered-prefill-group-tokens must be a positive integer, "
                f"got {self.layered_prefill_group_tokens!r}")
        chunk = self.layered_prefill_chunk_tokens
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise LayeredConfigError(f"--layered-prefill-chunk-tokens must be a positive integer, got {chunk!r}")
        if self.layered_prefill_policy not in POLICIES:
            raise LayeredConfigError(
                f"--layered-prefill-policy must be one of {', '.join(POLICIES)}, got {self.layered_prefill_policy!r}")
        unknown = set(self.switches) - set(SWITCHES)
        if unknown:
            raise LayeredConfigError(f"--layered-prefill-switches: unknown {sorted(unknown)} (choose from "
                                     f"{', '.join(SWITCHES)})")
        if self.layered_prefill_cost_profile not in COST_PROFILES:
            raise LayeredConfigError(f"--layered-prefill-cost-profile must be one of {', '.join(COST_PROFILES)}, "
                                     f"got {self.layered_prefill_cost_profile!r}")
        if self.layered_prefill_tbt_target_ms is not None and not self.layered_prefill_tbt_target_ms > 0:
            raise LayeredConfigError("--layered-prefill-tbt-target-ms must be > 0")
        if not self.layered_prefill_stash_budget_mb > 0:
            raise LayeredConfigError("--layered-prefill-stash-budget-mb must be > 0")
        if self.layered_prefill_policy == "adaptive" and self.fixed_groups is not None:
            raise LayeredConfigError("--layered-prefill-groups N fixes G; the adaptive policy chooses it "
                                     "(use --layered-prefill-groups auto)")
        if self.layered_prefill_routing not in ROUTINGS:
            raise LayeredConfigError(
                f"--layered-prefill-routing must be one of {', '.join(ROUTINGS)}, got {self.layered_prefill_routing!r}")
        if not (isinstance(self.layered_prefill_routing_alpha, (int, float)) and self.layered_prefill_routing_alpha > 0):
            raise LayeredConfigError(
                f"--layered-prefill-routing-alpha must be > 0, got {self.layered_prefill_routing_alpha!r}")
        # Nothing is silently ignored: a knob set away from its default needs the setting it tunes.
        for name, (enabled, needed) in {
            "layered_prefill_groups": (self.enable_layered_prefill, "--enable-layered-prefill"),
            "layered_prefill_group_tokens": (self.enable_layered_prefill, "--enable-layered-prefill"),
            "layered_prefill_chunk_tokens": (self.enable_layered_prefill, "--enable-layered-prefill"),
            "layered_prefill_routing_alpha": (self.layered_prefill_routing == "calibrated",
                                              "--layered-prefill-routing calibrated"),
            "layered_prefill_policy": (self.enable_layered_prefill, "--enable-layered-prefill"),
            "layered_prefill_tbt_target_ms": (self.layered_prefill_policy == "adaptive",
                                              "--layered-prefill-policy adaptive"),
            "layered_prefill_switches": (self.layered_prefill_policy == "adaptive",
                                         "--layered-prefill-policy adaptive"),
            "layered_prefill_stash_budget_mb": (self.layered_prefill_policy == "adaptive",
                                                "--layered-prefill-policy adaptive"),
            "layered_prefill_cost_profile": (self.layered_prefill_policy == "adaptive",
                                             "--layered-prefill-policy adaptive"),
        }.items():
            if not enabled and getattr(self, name) != LayeredConfig.__dataclass_fields__[name].default:
                raise LayeredConfigError(f"--{name.replace('_', '-')} has no effect without {needed}")
        if self.layered_prefill_trace is not None:
            parent = os.path.dirname(os.path.abspath(self.layered_prefill_trace))
            if not os.path.isdir(parent):
                raise LayeredConfigError(
                    f"--layered-prefill-trace: directory {parent!r} does not exist")

    @property
    def fixed_groups(self) -> Optional[int]:
        return None if self.layered_prefill_groups == "auto" else int(self.layered_prefill_groups)

    @property
    def switches(self) -> tuple:
        return tuple(x.strip() for x in self.layered_prefill_switches.split(",") if x.strip())

    @property
    def needs_plugin(self) -> bool:
        """Whether SGLang's scheduler processes need our hooks at all."""
        return (self.enable_layered_prefill or self.layered_prefill_trace is not None
                or self.needs_expert_hook or self.layered_prefill_cpu_fast_extend)

    @property
    def needs_expert_hook(self) -> bool:
        """Whether the router hook must run (it never does otherwise)."""
        return self.layered_prefill_expert_accounting or self.layered_prefill_routing != "model"

    def check_layers(self, num_layers: int) -> None:
        fixed = self.fixed_groups
        if fixed is not None and fixed > num_layers:
            raise LayeredConfigError(
                f"--layered-prefill-groups={fixed} exceeds the model's {num_layers} layers")

    # ---- transport to SGLang's child processes -------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LayeredConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise LayeredConfigError(f"unknown layered-prefill settings {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_env(cls, environ=os.environ) -> Optional["LayeredConfig"]:
        text = environ.get(ENV_VAR)
        return cls.from_json(text) if text else None

    @classmethod
    def option_names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))
