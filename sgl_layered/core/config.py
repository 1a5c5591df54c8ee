"""Layered-prefill settings: one frozen dataclass, each default written once, validated with clear errors."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

ENV_VAR = "SGL_LAYERED_CONFIG"  # carries the settings from the launching process into SGLang's children


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
    # Write one JSON line per forward iteration to this file (any mode, layered or not).
    layered_prefill_trace: Optional[str] = None

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
        if not self.enable_layered_prefill:
            defaults = LayeredConfig.__dataclass_fields__
            for name in ("layered_prefill_groups", "layered_prefill_group_tokens"):
                if getattr(self, name) != defaults[name].default:
                    raise LayeredConfigError(
                        f"--{name.replace('_', '-')} has no effect without --enable-layered-prefill")
        if self.layered_prefill_trace is not None:
            parent = os.path.dirname(os.path.abspath(self.layered_prefill_trace))
            if not os.path.isdir(parent):
                raise LayeredConfigError(
                    f"--layered-prefill-trace: directory {parent!r} does not exist")

    @property
    def fixed_groups(self) -> Optional[int]:
        return None if self.layered_prefill_groups == "auto" else int(self.layered_prefill_groups)

    @property
    def needs_plugin(self) -> bool:
        """Whether SGLang's scheduler processes need our hooks at all."""
        return self.enable_layered_prefill or self.layered_prefill_trace is not None

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
