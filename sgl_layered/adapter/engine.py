"""`sgl_layered.Engine`: a drop-in for `sglang.Engine` that also takes the layered-prefill settings."""

from __future__ import annotations

from sglang.srt.entrypoints.engine import Engine as SGLangEngine

from sgl_layered.core.config import LayeredConfig

from . import cli, settings


class Engine(SGLangEngine):
    """sglang.Engine plus `enable_layered_prefill`, `layered_prefill_groups`, `layered_prefill_group_tokens`
    and `layered_prefill_trace` keyword arguments. Every other argument goes to sglang.Engine unchanged."""

    def __init__(self, **kwargs):
        config = settings.pop_config_kwargs(kwargs)
        if config.needs_plugin and "server_args" in kwargs:
            raise settings.LayeredConfigError(
                "pass SGLang settings as keyword arguments, not server_args=, with sgl-layered settings")
        settings.validate_launch(config, kwargs.get)
        if config.enable_layered_prefill:
            kwargs.update(settings.forced_server_settings())
            settings.log_forced_settings()
        self.layered_config: LayeredConfig = config
        with settings.launch_env(config):
            super().__init__(**kwargs)
            if config.needs_plugin:
                # The launcher hook checks this too; repeat it here so the Engine API fails closed on its own.
                cli.check_scheduler_infos(self._scheduler_init_result.scheduler_infos, config)
