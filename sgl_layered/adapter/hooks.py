"""Every place sgl-layered touches SGLang, in one table.

Each hook names its target, the SGLang hook kind, the function or class we install, the process it is
needed in, and why. `patches/` holds the same seams as diffs against the pinned SGLang (the upstreaming
path); tests/test_patches.py keeps the two in step.

MAIN hooks live in the launching process (CLI flags, startup checks) and pass through unless layered
prefill or the trace is enabled for that launch. SCHEDULER hooks are installed only when a launch enables
one of them, in every SGLang child process of that launch.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass

from .archs import decoder_layers

MAIN = "main"
SCHEDULER = "scheduler"


@dataclass(frozen=True)
class Hook:
    target: str  # dotted path inside sglang
    kind: str  # SGLang HookType name: AFTER, AROUND or REPLACE
    impl: str  # "module:attribute" of our hook function or replacement class
    process: str  # MAIN or SCHEDULER
    why: str
    only_for_experts: bool = False  # installed only with expert accounting or a routing override
    only_on_cpu_engine: bool = False  # installed only in SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1)

    def wanted(self, config) -> bool:
        if self.only_on_cpu_engine and os.environ.get("SGLANG_USE_CPU_ENGINE") != "1":
            return False
        return not self.only_for_experts or (config is not None and config.needs_expert_hook)


HOOKS: tuple = (
    Hook("sglang.srt.server_args.ServerArgs.add_cli_args", "AFTER", "sgl_layered.adapter.cli:add_cli_args_hook",
         MAIN, "list --enable-layered-prefill and its knobs in `python -m sglang.launch_server --help`"),
    Hook("sglang.srt.server_args.ServerArgs.from_cli_args", "AROUND", "sgl_layered.adapter.cli:from_cli_args_hook",
         MAIN, "read our flags (from_cli_args keeps only ServerArgs fields), validate them before anything "
               "is spawned, set the inputs layered mode needs, hand the settings to the children"),
    Hook("sglang.srt.entrypoints.engine._wait_for_scheduler_ready", "AFTER",
         "sgl_layered.adapter.cli:check_schedulers_hook", MAIN,
         "refuse to serve unless every scheduler rank reports layered prefill installed and verified"),
    Hook("sglang.srt.managers.scheduler.Scheduler", "REPLACE", "sgl_layered.adapter.scheduler:LayeredScheduler",
         SCHEDULER, "admit prompts as cohorts, run one layer group per iteration with the decode batch, "
                    "merge a cohort into decode only after its last group; record the per-iteration trace"),
    *(Hook(layer + ".forward", "AROUND", "sgl_layered.adapter.fused_pass:decoder_layer_hook",
           SCHEDULER, f"splice the cohort's prompt rows into the decode forward inside the active layer group "
                      f"({label})") for layer, label in decoder_layers().items()),
    Hook("sglang.srt.model_executor.runner.decode_cuda_graph_runner.DecodeCudaGraphRunner.can_run_graph",
         "AROUND", "sgl_layered.adapter.cli:no_graph_during_layered_pass", SCHEDULER,
         "iterations carrying a layered pass run eager (a graph replay would skip the spliced rows); "
         "decode-only iterations keep SGLang's decode CUDA graph"),
    Hook("sglang.srt.model_executor.cpu_graph_runner.CPUGraphRunner.can_run_graph", "AROUND",
         "sgl_layered.adapter.cli:no_graph_during_layered_pass", SCHEDULER,
         "the same for SGLang's CPU graph runner (CPU engine with graphs on)"),
    Hook("sglang.srt.layers.moe.topk.select_experts", "AROUND", "sgl_layered.adapter.experts:select_experts_hook",
         SCHEDULER, "count distinct experts per MoE layer per forward (expert-load accounting) and apply the "
                    "opt-in calibrated routing for random-weight benchmark models", only_for_experts=True),
    *(Hook(f"sglang.srt.models.qwen2_moe.{name}", "REPLACE", f"sgl_layered.adapter.cpu_ops:{impl}", SCHEDULER,
           "Qwen2-MoE's shared-expert gate is a Triton kernel with no CPU path: a pure-torch equivalent, in "
           "SGLang's CPU engine only (a GPU launch keeps the kernel)", only_on_cpu_engine=True)
      for name, impl in (("fused_gate_sigmoid_mul", "gate_sigmoid_mul"),
                         ("fused_gate_sigmoid_mul_add", "gate_sigmoid_mul_add"))),
    Hook("sglang.srt.models.deepseek_common.attention_backend_handler.AttentionBackendRegistry.get_handler",
         "AROUND", "sgl_layered.adapter.cpu_ops:mla_method_for_torch_native", SCHEDULER,
         "DeepSeek-V2/V3's MLA attention cannot prefill with torch_native (SGLang dispatches it to an MHA path whose "
         "k/v torch_native ignores): the absorbed MLA path for all forward modes, in SGLang's CPU engine only",
         only_on_cpu_engine=True),
)


# SGLang names the adapter calls directly (besides the hooked seams). They are part of the contract with the
# pinned release; tests/test_patches.py checks that each still exists.
CALLED: tuple = (
    "sglang.srt.model_executor.model_runner.ModelRunner._get_attention_backend",
    "sglang.srt.model_executor.model_runner.ModelRunner._prepare_eager_forward_batch",
    "sglang.srt.model_executor.model_runner.ModelRunner.sample",
    "sglang.srt.models.deepseek_common.attention_backend_handler._dispatch_mla_subtype",
    "sglang.srt.managers.scheduler.Scheduler._relay_forward_payload",
    "sglang.srt.managers.scheduler.Scheduler._copy_auxiliary_output_to_cpu",
    "sglang.srt.managers.scheduler.Scheduler.update_running_batch",
    "sglang.srt.managers.overlap_utils.resolve_forward_inputs",
    "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new",
    "sglang.srt.model_executor.forward_batch_info.ForwardBatch.set_local_num_token_non_padded",
    "sglang.srt.model_executor.forward_context.forward_context",
    "sglang.srt.model_executor.forward_context.get_attn_backend",
    "sglang.srt.layers.layer_boundary.residual.batch.start",
    "sglang.srt.layers.layer_boundary.residual.batch.stream_of",
    "sglang.srt.layers.layer_boundary.residual.batch.clear",
    "sglang.srt.layers.layer_boundary.residual.batch.final_norm",
    "sglang.srt.layers.layer_boundary.residual.stream.ResidualStream.from_handoff",
    "sglang.srt.layers.layer_boundary.residual.stream.ResidualStream.export",
)


class HookNotApplied(RuntimeError):
    pass


def resolve_impl(hook: Hook):
    module, attr = hook.impl.split(":")
    return getattr(importlib.import_module(module), attr)


def register(process: str, config=None) -> None:
    """Register the table's hooks for `process` with SGLang's registry (SGLang applies them afterwards)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for hook in HOOKS:
        if hook.process == process and hook.wanted(config):
            HookRegistry.register(hook.target, resolve_impl(hook), HookType[hook.kind])


def applied(hook: Hook) -> bool:
    """Whether SGLang applied `hook` in this process: registry bookkeeping and the live object agree."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    if hook.target not in HookRegistry._patched:
        return False
    owner, attr = hook.target.rsplit(".", 1)
    live = getattr(pkgutil.resolve_name(owner), attr)
    live = getattr(live, "__func__", live)
    if hook.kind == "REPLACE" and isinstance(resolve_impl(hook), type):
        return live is resolve_impl(hook)  # a class is substituted as is
    return getattr(live, "__wrapped__", None) is not None  # functions are wrapped (AROUND and REPLACE alike)


def verify(process: str, config=None) -> list:
    wanted = [h for h in HOOKS if h.process == process and h.wanted(config)]
    missing = [h.target for h in wanted if not applied(h)]
    if missing:
        raise HookNotApplied(
            "sgl-layered refuses to start: SGLang did not apply the hook(s) " + ", ".join(missing) +
            " (the pinned SGLang seam may have moved; see patches/CATALOG.md)")
    return [h.target for h in wanted]


def verify_scheduler_hooks(config) -> list:
    return verify(SCHEDULER, config)
