"""Launcher-side hooks (see hooks.HOOKS): CLI flags, pre-spawn validation, the attention backend, the scheduler
handshake."""

from __future__ import annotations

import logging
import os

from sgl_layered.core.config import ENV_VAR, LayeredConfig, LayeredConfigError

from . import fused_pass, settings


def add_cli_args_hook(result, parser):
    settings.add_flags(parser)
    return result


def from_cli_args_hook(original, cls, namespace):
    config = settings.config_from_namespace(namespace)
    if config.needs_plugin:
        from . import hooks

        hooks.verify(hooks.MAIN)
        settings.validate_launch(config, lambda name: getattr(namespace, name, None))
    if config.enable_layered_prefill:
        for name, value in settings.forced_server_settings().items():
            setattr(namespace, name, value)
        settings.log_forced_settings()
    server_args = original(cls, namespace)
    # launch_server's process exists for this one launch: the children it spawns inherit the setting.
    if config.needs_plugin:
        os.environ[ENV_VAR] = config.to_json()
    else:
        os.environ.pop(ENV_VAR, None)
    return server_args


logger = logging.getLogger("sgl_layered")


def _layered_launch() -> bool:
    config = LayeredConfig.from_env()
    return config is not None and config.enable_layered_prefill


def served_default_attention_backend(original, server_args, use_mla_backend, model_config):
    """AROUND hook on SGLang's default attention-backend choice (used when --attention-backend is unset): where SGLang
    would pick a backend layered prefill does not serve (trtllm_mha on Blackwell; fa3 / FlashInfer for MLA models),
    pick a served one before anything loads, and say so."""
    backend = original(server_args, use_mla_backend, model_config)
    if not _layered_launch() or backend in settings.served_attention_backends(bool(use_mla_backend)):
        return backend
    from sglang.srt.runtime_context import get_platform

    served = settings.served_substitute(bool(use_mla_backend), bool(get_platform().has_flashinfer))
    logger.warning("layered prefill: SGLang's default attention backend here is %s, which layered prefill does not "
                   "serve%s; using %s", backend, " for MLA models" if use_mla_backend else "", served)
    return served


def check_resolved_attention_backend(result, server_args):
    """AFTER hook on ServerArgs.resolve_once (the launching process, before any child starts): the attention backends
    SGLang resolved, by default, by a model override or from the user's flags, must be ones layered prefill serves."""
    if _layered_launch():
        from sglang.srt.arg_groups.model_override_base import attention_backends_of, resolved_view, use_mla_backend

        view = resolved_view(server_args)
        prefill, decode = attention_backends_of(view)
        settings.check_resolved_backends(prefill, decode, bool(use_mla_backend(view)))
    return result


def check_schedulers_hook(scheduler_infos, *args, **kwargs):
    config = LayeredConfig.from_env()
    if config is not None and config.needs_plugin:
        check_scheduler_infos(scheduler_infos, config)
    return scheduler_infos


def check_scheduler_infos(scheduler_infos, config: LayeredConfig) -> None:
    for rank, info in enumerate(scheduler_infos):
        marker = info.get("sgl_layered")
        if marker is None:
            raise LayeredConfigError(
                f"scheduler rank {rank} started without sgl-layered's scheduler: the plugin did not load in that "
                "process (is SGLANG_PLUGINS excluding 'sgl_layered'?)")
        if config.enable_layered_prefill and not marker.get("layered"):
            raise LayeredConfigError(f"scheduler rank {rank} started without layered prefill")


def no_graph_during_layered_pass(original, runner, forward_batch, *args, **kwargs):
    if fused_pass.is_active():
        return False
    return original(runner, forward_batch, *args, **kwargs)
