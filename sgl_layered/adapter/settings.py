"""Our launch settings: CLI flags, Engine keyword arguments, validation, and transport to SGLang's children.

SGLang's ServerArgs is a sealed msgspec record, so our settings never become ServerArgs fields. They are
parsed next to it (CLI hook or Engine subclass), validated before anything is spawned, and carried to the
scheduler processes in one environment variable (children inherit the environment at spawn).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import fields
from typing import Any, Callable, Optional

from sgl_layered import SGLANG_PIN
from sgl_layered.core.config import COST_PROFILES, ENV_VAR, POLICIES, ROUTINGS, LayeredConfig, LayeredConfigError

from .archs import SUPPORTED, unsupported_message

logger = logging.getLogger("sgl_layered")

_HELP = {
    "enable_layered_prefill": "Run prompts as layered prefill (arXiv 2510.08055): each iteration runs the prompt "
                              "cohort through one group of layers, fused with the full decode batch. Replaces "
                              "chunked prefill.",
    "layered_prefill_groups": "Layer groups per prompt cohort: a number, or 'auto' for the paper's rule "
                              "G = clamp(ceil(L / group_tokens), 1, num_layers) for a cohort of L new tokens.",
    "layered_prefill_group_tokens": "Tokens per layer group for --layered-prefill-groups auto.",
    "layered_prefill_chunk_tokens": "Chunk x layer hybrid: a cohort carries at most this many new tokens; longer "
                                    "prompts are admitted one chunk at a time (KV allocated per chunk) and each "
                                    "chunk runs layered. Unset: whole prompts.",
    "layered_prefill_trace": "Write one JSON line per forward iteration (times, decode rows, prefill pieces "
                             "with request ids, token counts and layer ranges) to this file. Works with "
                             "layered prefill on or off.",
    "layered_prefill_expert_accounting": "Count distinct experts per MoE layer per forward and the expert-weight "
                                         "bytes they imply, in the trace and (with --enable-metrics) as "
                                         "Prometheus counters. Works with layered prefill on or off.",
    "layered_prefill_routing": "Expert routing: 'model' (the checkpoint's router), 'calibrated' (Zipf-skewed "
                               "routing reproducing trained-router coverage, for random-weight benchmark models; "
                               "changes outputs), 'forced-rows' (for accounting tests).",
    "layered_prefill_routing_alpha": "Zipf exponent of --layered-prefill-routing calibrated.",
    "layered_prefill_cpu_fast_extend": "SGLang's CPU engine, torch_native attention, any mode: extend attention "
                                       "computes only the new rows' queries (SGLang computes a full-length query "
                                       "per request), so chunked and mixed batches cost what they cost on a GPU "
                                       "backend. A benchmark setting; outputs may differ from stock in the last bits.",
    "layered_prefill_policy": "'paper' (one cohort at a time, G from the prompt length) or 'adaptive' "
                               "(cost-model G, pipelined cohorts, whole pass when nothing decodes, stash budget).",
    "layered_prefill_tbt_target_ms": "Adaptive policy: keep each iteration's predicted time within this many ms "
                                     "(cost model fitted online). Unset: the paper's per-iteration prefill work.",
    "layered_prefill_switches": "Adaptive policy improvements to enable, comma-separated: "
                                "adaptive,pipeline,idle_whole,stash,choose,eager_join (eager_join: pipelined "
                                "cohorts join even when waiting would give them their first token sooner).",
    "layered_prefill_cost_profile": "Adaptive policy, 'choose' switch: hardware profile of the roofline cost model "
                                    "that picks layered or chunked execution per cohort ('auto': by device).",
    "layered_prefill_stash_budget_mb": "Adaptive policy: memory budget (MB) for in-flight cohorts' activations.",
}


def add_flags(parser) -> None:
    defaults = LayeredConfig()
    group = parser.add_argument_group("sgl-layered (layered prefill)")
    group.add_argument("--enable-layered-prefill", action="store_true", help=_HELP["enable_layered_prefill"])
    group.add_argument("--layered-prefill-groups", type=str, default=defaults.layered_prefill_groups,
                       metavar="N|auto", help=_HELP["layered_prefill_groups"])
    group.add_argument("--layered-prefill-group-tokens", type=int,
                       default=defaults.layered_prefill_group_tokens, help=_HELP["layered_prefill_group_tokens"])
    group.add_argument("--layered-prefill-chunk-tokens", type=int, default=defaults.layered_prefill_chunk_tokens,
                       help=_HELP["layered_prefill_chunk_tokens"])
    group.add_argument("--layered-prefill-policy", type=str, default=defaults.layered_prefill_policy,
                       choices=POLICIES, help=_HELP["layered_prefill_policy"])
    group.add_argument("--layered-prefill-tbt-target-ms", type=float,
                       default=defaults.layered_prefill_tbt_target_ms, help=_HELP["layered_prefill_tbt_target_ms"])
    group.add_argument("--layered-prefill-switches", type=str, default=defaults.layered_prefill_switches,
                       help=_HELP["layered_prefill_switches"])
    group.add_argument("--layered-prefill-cost-profile", type=str, default=defaults.layered_prefill_cost_profile,
                       choices=COST_PROFILES, help=_HELP["layered_prefill_cost_profile"])
    group.add_argument("--layered-prefill-stash-budget-mb", type=float,
                       default=defaults.layered_prefill_stash_budget_mb, help=_HELP["layered_prefill_stash_budget_mb"])
    group.add_argument("--layered-prefill-trace", type=str, default=defaults.layered_prefill_trace,
                       metavar="PATH", help=_HELP["layered_prefill_trace"])
    group.add_argument("--layered-prefill-expert-accounting", action="store_true",
                       help=_HELP["layered_prefill_expert_accounting"])
    group.add_argument("--layered-prefill-routing", type=str, default=defaults.layered_prefill_routing,
                       choices=ROUTINGS, help=_HELP["layered_prefill_routing"])
    group.add_argument("--layered-prefill-routing-alpha", type=float,
                       default=defaults.layered_prefill_routing_alpha, help=_HELP["layered_prefill_routing_alpha"])
    group.add_argument("--layered-prefill-cpu-fast-extend", action="store_true",
                       help=_HELP["layered_prefill_cpu_fast_extend"])


def config_from_namespace(namespace) -> LayeredConfig:
    return LayeredConfig(**{f.name: getattr(namespace, f.name) for f in fields(LayeredConfig)
                            if hasattr(namespace, f.name)})


def pop_config_kwargs(kwargs: dict) -> LayeredConfig:
    return LayeredConfig(**{name: kwargs.pop(name) for name in LayeredConfig.option_names() if name in kwargs})


# Attention backends the fused pass serves. MHA models: torch_native (CPU, tested), triton (tested on CPU under
# Triton's interpreter), flashinfer and fa3 (GPU: their prompt-rows metadata is planned per cohort before the forward;
# reasoned from SGLang's GPU code, tests in tests/gpu, not yet run on a GPU). fa3 is SGLang's default on Hopper.
# MLA models (DeepSeek): torch_native and triton, whose MLA forward concatenates q/k itself; fa3 and FlashInfer MLA
# need per-row rope operands and (FlashInfer) ragged prefill plans the row split is not verified for.
ATTENTION_BACKENDS = ("torch_native", "triton", "flashinfer", "fa3")
MLA_ATTENTION_BACKENDS = ("torch_native", "triton")


def served_attention_backends(mla: bool) -> tuple:
    return MLA_ATTENTION_BACKENDS if mla else ATTENTION_BACKENDS


def served_substitute(mla: bool, has_flashinfer: bool) -> str:
    """The backend layered prefill uses on a GPU where SGLang's default is one it does not serve."""
    return "flashinfer" if has_flashinfer and not mla else "triton"


def check_resolved_backends(prefill: str, decode: str, mla: bool) -> None:
    """Refuse, before anything loads, a resolved attention-backend pair layered prefill does not serve."""
    served = served_attention_backends(mla)
    kind = "MLA models (DeepSeek)" if mla else "this model"
    if prefill != decode:
        raise LayeredConfigError(
            f"--enable-layered-prefill runs prompt and decode rows in one forward with one attention backend; SGLang "
            f"resolved prefill={prefill}, decode={decode}: pass one --attention-backend ({', '.join(served)})")
    if prefill not in served:
        raise LayeredConfigError(
            f"--enable-layered-prefill serves {kind} with --attention-backend {' or '.join(served)}; SGLang resolved "
            f"{prefill!r} (pass --attention-backend {served[-1]})")

# Combinations layered prefill does not support yet. Each: (ServerArgs field, predicate on the user's value,
# why). Checked on what the user asked for before launch; the scheduler re-checks the resolved values.
UNSUPPORTED: tuple = (
    ("enable_mixed_chunk", bool, "--enable-mixed-chunk: layered prefill replaces mixed chunked prefill"),
    ("chunked_prefill_size", lambda v: v not in (None, -1),
     "--chunked-prefill-size: layered prefill does not chunk prompts by tokens; drop the flag"),
    ("pp_size", lambda v: (v or 1) > 1, "--pp-size > 1: pipeline parallelism is not supported yet"),
    ("speculative_algorithm", lambda v: v not in (None, "", "NONE"),
     "--speculative-algorithm: speculative decoding is not supported yet"),
    ("disaggregation_mode", lambda v: v not in (None, "null"),
     "--disaggregation-mode: PD disaggregation is not supported yet"),
    ("dp_size", lambda v: (v or 1) > 1, "--dp-size > 1: data parallelism is not supported yet"),
    ("enable_dp_attention", bool, "--enable-dp-attention: data-parallel attention is not supported yet"),
    ("attn_cp_size", lambda v: (v or 1) > 1, "--attn-cp-size > 1: context parallelism is not supported yet"),
    ("ep_size", lambda v: (v or 1) > 1, "--ep-size > 1: expert parallelism is not supported yet"),
    ("moe_a2a_backend", lambda v: v not in (None, "none"),
     "--moe-a2a-backend: all-to-all MoE backends are not supported yet"),
    ("enable_two_batch_overlap", bool, "--enable-two-batch-overlap is not supported yet"),
    ("enable_single_batch_overlap", bool, "--enable-single-batch-overlap is not supported yet"),
    ("enable_pdmux", bool, "--enable-pdmux: PD multiplexing is not supported with layered prefill"),
    ("dllm_algorithm", lambda v: v is not None, "--dllm-algorithm: diffusion LMs are not supported"),
    ("enable_hierarchical_cache", bool, "--enable-hierarchical-cache is not supported yet"),
    ("enable_lora", bool, "--enable-lora: LoRA is not supported yet"),
    ("lora_paths", bool, "--lora-paths: LoRA is not supported yet"),
    ("enable_torch_compile", bool, "--enable-torch-compile: compiled forwards bypass the fused layer pass"),
    ("is_embedding", bool, "--is-embedding: layered prefill is for generative models"),
    *((name, lambda v: v not in (None, *ATTENTION_BACKENDS),
       f"--{name.replace('_', '-')} other than {', '.join(ATTENTION_BACKENDS)}: the fused pass's row split is "
       "built and verified for these backends only")
      for name in ("attention_backend", "prefill_attention_backend", "decode_attention_backend")),
)


def check_combinations(value_of: Callable[[str], Any]) -> None:
    for name, bad, why in UNSUPPORTED:
        if bad(value_of(name)):
            raise LayeredConfigError(f"--enable-layered-prefill cannot be combined with {why}")


def forced_server_settings() -> dict:
    """ServerArgs inputs layered mode sets: no token chunking, and the non-overlap event loop."""
    return {"chunked_prefill_size": -1, "disable_overlap_schedule": True}


def check_version() -> None:
    import sglang

    if sglang.__version__ != SGLANG_PIN:
        raise LayeredConfigError(
            f"sgl-layered requires SGLang {SGLANG_PIN} exactly (it wraps seams of that release); "
            f"found SGLang {sglang.__version__}")


def check_model(model_path: str, trust_remote_code: bool, config: LayeredConfig) -> int:
    """Refuse unsupported architectures and impossible group counts; return the model's layer count."""
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    arch = (getattr(hf, "architectures", None) or ["<none>"])[0]
    if arch not in SUPPORTED:
        raise LayeredConfigError(unsupported_message(arch))
    num_layers = int(hf.num_hidden_layers)
    config.check_layers(num_layers)
    return num_layers


def validate_launch(config: LayeredConfig, value_of: Callable[[str], Any]) -> None:
    """All checks that can run before SGLang spawns anything."""
    if not config.needs_plugin:
        return
    check_version()
    if os.environ.get("SGLANG_USE_CPU_ENGINE") == "1":
        from .cpu_ops import allow_deterministic_inference

        allow_deterministic_inference()
    if config.layered_prefill_expert_accounting and not (config.layered_prefill_trace or value_of("enable_metrics")):
        raise LayeredConfigError("--layered-prefill-expert-accounting needs --layered-prefill-trace or "
                                 "--enable-metrics to report to")
    if config.layered_prefill_cpu_fast_extend and (os.environ.get("SGLANG_USE_CPU_ENGINE") != "1" or
                                                   value_of("attention_backend") not in (None, "torch_native")):
        raise LayeredConfigError("--layered-prefill-cpu-fast-extend replaces torch_native's extend attention in "
                                 "SGLang's CPU engine only (SGLANG_USE_CPU_ENGINE=1, --attention-backend "
                                 f"torch_native); this launch has {value_of('attention_backend')!r}")
    if config.enable_layered_prefill:
        check_combinations(value_of)
    model_path = value_of("model_path")
    if model_path and (config.enable_layered_prefill or config.needs_expert_hook):
        check_model(model_path, bool(value_of("trust_remote_code")), config)


@contextlib.contextmanager
def launch_env(config: Optional[LayeredConfig]):
    """Expose `config` to children spawned inside the block, then restore the parent's environment."""
    previous = os.environ.get(ENV_VAR)
    if config is not None and config.needs_plugin:
        os.environ[ENV_VAR] = config.to_json()
    else:
        os.environ.pop(ENV_VAR, None)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def log_forced_settings() -> None:
    logger.info("layered prefill: token chunking off (--chunked-prefill-size -1) and SGLang's overlap "
                "scheduler off (layered iterations run the non-overlap event loop)")
