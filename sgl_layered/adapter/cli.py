"""Launcher-side hooks (see hooks.HOOKS): CLI flags, pre-spawn validation, the scheduler handshake."""

from __future__ import annotations

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
