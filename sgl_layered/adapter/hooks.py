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
    only_for_fast_extend: bool = False  # installed only with --layered-prefill-cpu-fast-extend

    def wanted(self, config) -> bool:
        if self.only_on_cpu_engine and os.environ.get("SGLANG_USE_CPU_ENGINE") != "1":
            return False
        if self.only_for_fast_extend and not (config is not None and config.layered_prefill_cpu_fast_extend):
            return False
        return not self.only_for_experts or (config is not None and config.needs_expert_hook)


HOOKS: tuple = (
    Hook("sglang.srt.server_args.ServerArgs.add_cli_args", "AFTER", "sgl_layered.adapter.cli:add_cli_args_hook",
         MAIN, "list --enable-layered-prefill and its knobs in `python -m sglang.launch_server --help`"),
    Hook("sglang.srt.server_args.ServerArgs.from_cli_args", "AROUND", "sgl_layered.adapter.cli:from_cli_args_hook",
         MAIN, "read our flags (from_cli_args keeps only ServerArgs fields), validate them before anything "
               "is spawned, set the inputs layered mode needs, hand the settings to the children"),
    Hook("sglang.srt.arg_groups.overrides.get_default_attn_backend", "AROUND",
         "sgl_layered.adapter.cli:served_default_attention_backend", MAIN,
         "with --attention-backend unset, SGLang picks per platform (fa3 on Hopper, trtllm_mha on Blackwell, fa3 / "
         "FlashInfer for MLA): where that is not a backend layered prefill serves, pick a served one before loading"),
    Hook("sglang.srt.server_args.ServerArgs.resolve_once", "AFTER",
         "sgl_layered.adapter.cli:check_resolved_attention_backend", MAIN,
         "refuse, before anything loads, an attention backend SGLang resolved (default, model override, flags) "
         "that layered prefill does not serve"),
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
    Hook("sglang.srt.model_executor.model_runner.ModelRunner.maybe_enable_batch_invariant_mode", "AROUND",
         "sgl_layered.adapter.cpu_ops:no_batch_invariant_kernels", SCHEDULER,
         "--enable-deterministic-inference (seeded sampling) in SGLang's CPU engine: its batch-invariant kernels need "
         "a GPU and raise on a CPU; skipped in the CPU engine only", only_on_cpu_engine=True),
    Hook("sglang.srt.models.deepseek_common.attention_backend_handler.AttentionBackendRegistry.get_handler",
         "AROUND", "sgl_layered.adapter.cpu_ops:mla_method_for_torch_native", SCHEDULER,
         "DeepSeek-V2/V3's MLA attention cannot prefill with torch_native (SGLang dispatches it to an MHA path whose "
         "k/v torch_native ignores): the absorbed MLA path for all forward modes, in SGLang's CPU engine only",
         only_on_cpu_engine=True),
    Hook("sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_extend",
         "AROUND", "sgl_layered.adapter.cpu_ops:extend_new_rows_only", SCHEDULER,
         "--layered-prefill-cpu-fast-extend (benchmarks, any mode): torch_native computes a full-length query per "
         "extend request, so mixed batches and prefix chunks cost far more on the CPU than on a GPU backend; "
         "compute the new rows only", only_on_cpu_engine=True, only_for_fast_extend=True),
)


# Every SGLang internal the adapter calls, reads, writes or overrides, besides the hooked seams above. tests/test_patches.py
# checks each against the pinned wheel (methods and functions exist; instance attributes are assigned in the owning
# class's source or are dataclass fields), and that the adapter's source touches no Scheduler or ModelRunner name
# missing from this table.
CALL, READ, WRITE, OVERRIDE = "call", "read", "write", "override"


@dataclass(frozen=True)
class Internal:
    owner: str  # dotted path of an SGLang module or class
    names: tuple  # attributes, methods or functions of it
    use: str  # CALL, READ, WRITE (read and written) or OVERRIDE (a Scheduler method our subclass overrides)
    why: str


_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_RUNNER = "sglang.srt.model_executor.model_runner.ModelRunner"
_BATCH = "sglang.srt.managers.schedule_batch.ScheduleBatch"
_REQ = "sglang.srt.managers.schedule_batch.Req"
_FB = "sglang.srt.model_executor.forward_batch_info.ForwardBatch"

SURFACE: tuple = (
    # -- the Scheduler subclass (installed by the REPLACE hook) -------------------------------------------------
    Internal(_SCHED, ("__init__", "get_init_info", "get_internal_state"), OVERRIDE,
             "verify our hooks, build the layered runtime; report it in the rank handshake and server info"),
    Internal(_SCHED, ("_add_request_to_queue",), OVERRIDE,
             "refuse empty prompts and out-of-vocabulary ids with a clear abort (they kill stock's scheduler)"),
    Internal(_SCHED, ("get_next_batch_to_run", "_should_defer_prefill", "get_prefill_adder_class"), OVERRIDE,
             "one policy decision per iteration (taken where SGLang knows the decode batch), admission under its "
             "limits, the admitted batch turned into a cohort"),
    Internal(_SCHED, ("_poll_timeout_aborts", "process_input_requests"), OVERRIDE,
             "the TP leader's iteration times ride SGLang's request broadcast, so every rank's policy learns alike"),
    Internal(_SCHED, ("run_batch", "process_batch_result"), OVERRIDE,
             "run the fused pass; process decode rows and each cohort that sampled; time iterations"),
    Internal(_SCHED, ("_collect_inflight_batches", "abort_request", "is_fully_idle", "pause_generation"), OVERRIDE,
             "cohorts mid-layers count as in flight for SGLang's bookkeeping, aborts, idle checks and a retracting "
             "pause"),
    Internal(_SCHED, ("update_running_batch", "_relay_forward_payload", "_copy_auxiliary_output_to_cpu",
                      "_release_aborted_request", "send_abort_output", "_add_request_to_queue"), CALL,
             "what SGLang does after admitting a prefill, after sampling, and when it drops an aborted request"),
    Internal(_SCHED, ("tp_worker", "server_args", "model_config", "waiting_queue", "running_batch",
                      "max_prefill_tokens", "future_map", "tree_cache", "token_to_kv_pool_allocator",
                      "req_to_token_pool", "max_total_num_tokens", "enable_overlap", "is_mixed_chunk",
                      "chunked_prefill_size", "spec_algorithm", "require_mlp_sync", "grammar_manager",
                      "hisparse_coordinator"), READ,
             "the scheduler state a Step is decided from, resolved settings re-checked at start, pools for leak checks"),
    Internal(_SCHED, ("chunked_req", "forward_ct", "_pending_chunked_abort_req"), WRITE,
             "hold a hybrid chunk aside while it is mid-layers; count a cohort-only forward; end an aborted held chunk"),
    Internal("sglang.srt.constrained.grammar_manager.GrammarManager",
             ("has_waiting_grammars", "get_ready_grammar_requests"), CALL,
             "move requests whose grammar compiled into the waiting queue while a cohort is in flight (SGLang polls "
             "only inside its admission)"),
    Internal("sglang.srt.arg_groups.choices", ("DETERMINISTIC_ATTENTION_BACKEND_CHOICES",
                                               "RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND"), READ,
             "whether torch_native is already admitted for deterministic inference (CPU engine)"),
    Internal("sglang.srt.arg_groups.choices", ("add_deterministic_attention_backend_choices",
                                               "add_radix_supported_deterministic_attention_backend_choices"), CALL,
             "admit torch_native for --enable-deterministic-inference in SGLang's CPU engine (seeded sampling)"),
    Internal("sglang.srt.managers.schedule_policy.PrefillAdder", ("__init__",), CALL,
             "built with the Step's token cap and chunk size (parameters rem_input_tokens, rem_chunk_tokens)"),
    Internal("sglang.srt.managers.scheduler", ("_make_abort_req",), CALL, "the abort output of a dropped cohort"),
    Internal("sglang.srt.managers.schedule_batch", ("retract_all",), CALL,
             "a retracting pause frees the cohorts' KV and resets their requests as SGLang does its running batch"),
    # -- the model runner -----------------------------------------------------------------------------------------
    Internal(_RUNNER, ("_get_attention_backend", "_prepare_eager_forward_batch", "_extend_forward_kwargs", "sample",
                       "compute_logprobs_only"),
             CALL, "the prompt rows' attention-backend instance; a cohort's forward batch prepared, embedded (a "
                   "request's input_embeds) and sampled as stock"),
    Internal(_RUNNER, ("model", "model_config", "dtype", "device", "attn_backend"), READ,
             "layer stack, shapes and the decode backend"),
    Internal(_RUNNER, ("forward_pass_id",), WRITE,
             "a cohort-only pass is a forward pass of its own (SGLang's expert distribution recorder sees it)"),
    Internal(_RUNNER, ("init_new_workspace",), WRITE, "restored after building the prompt rows' backend"),
    # -- batches and requests -------------------------------------------------------------------------------------
    Internal(_BATCH, ("reqs", "forward_mode", "extend_num_tokens", "extend_lens", "decoding_reqs", "return_logprob",
                      "return_hidden_states", "extend_logprob_start_lens", "req_pool_indices", "batch_size",
                      "is_empty"), READ, "cohorts are SGLang's own prefill batches"),
    Internal(_BATCH, ("input_ids", "forward_iter", "launch_ts", "after_idle_gap"), WRITE,
             "what SGLang's run_batch records on a prefill batch, for the cohort's first tokens and step metrics"),
    Internal(_REQ, ("rid", "origin_input_ids", "output_ids", "prefix_len", "inflight_middle_chunks", "finished",
                    "set_finish_with_abort", "kv"), READ,
             "the view's queue summary, abort matching, input checks, whether a request still holds KV"),
    Internal(_REQ, ("to_finish", "finished_reason"), WRITE, "a cohort whose requests were all aborted is dropped"),
    Internal(_FB, ("init_new", "set_local_num_token_non_padded"), CALL, "a cohort's forward batch, the fused view"),
    Internal(_FB, ("forward_mode", "batch_size", "input_ids", "input_embeds", "positions", "out_cache_loc",
                   "req_pool_indices", "seq_lens", "seq_lens_cpu", "seq_lens_sum", "extend_num_tokens",
                   "extend_seq_lens", "extend_prefix_lens", "extend_start_loc", "extend_seq_lens_cpu",
                   "extend_prefix_lens_cpu", "global_num_token_non_padded_cpu", "global_num_token_non_padded",
                   "attn_tp_sequence_sharded", "sampling_info", "return_logprob", "extend_logprob_start_lens_cpu",
                   "rids", "residual_stream", "is_prefill_only"), WRITE,
             "the fused view: the cohort's prompt rows followed by the decode rows as one MIXED batch"),
)

# Module-level SGLang functions, classes and constants the adapter imports (besides the hook targets).
IMPORTED: tuple = (
    "sglang.srt.beam_search.logits_capture.capture_pre_sample_logits",
    "sglang.srt.managers.schedule_batch.NextBatchPlan",
    "sglang.srt.managers.schedule_batch.FINISH_ABORT",
    "sglang.srt.managers.utils.GenerationBatchResult",
    "sglang.srt.managers.overlap_utils.resolve_forward_inputs",
    "sglang.srt.mem_cache.common.release_kv_cache",
    "sglang.srt.model_executor.forward_batch_info.ForwardMode",
    "sglang.srt.model_executor.forward_context.ForwardContext",
    "sglang.srt.model_executor.forward_context.forward_context",
    "sglang.srt.model_executor.forward_context.get_attn_backend",
    "sglang.srt.runtime_context.get_parallel",
    "sglang.srt.runtime_context.get_observability",
    "sglang.srt.runtime_context.get_model",
    "sglang.srt.layers.layer_boundary.residual.batch.start",
    "sglang.srt.layers.layer_boundary.residual.batch.stream_of",
    "sglang.srt.layers.layer_boundary.residual.batch.clear",
    "sglang.srt.layers.layer_boundary.residual.batch.final_norm",
    "sglang.srt.layers.layer_boundary.residual.stream.ResidualStream.from_handoff",
    "sglang.srt.layers.layer_boundary.residual.stream.ResidualStream.export",
    "sglang.srt.eplb.expert_distribution.get_global_expert_distribution_recorder",
    "sglang.srt.utils.common.BumpAllocator",
    "sglang.srt.models.deepseek_common.attention_backend_handler._dispatch_mla_subtype",
    "sglang.srt.plugins.hook_registry.HookRegistry",
    "sglang.srt.plugins.hook_registry.HookType",
    "sglang.srt.entrypoints.engine.Engine",
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
