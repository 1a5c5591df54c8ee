"""SGLang plugin entry point (`sglang.srt.plugins` group): runs in every SGLang process at start-up.

In the launching process it registers the launcher hooks (CLI flags and checks, pass-through unless a launch
enables us). In SGLang's child processes it does nothing unless the launch enabled layered prefill or the
trace (the settings arrive in an environment variable); then it registers the scheduler hooks, which the
scheduler verifies before serving. A failure to register there stops that process (fail closed) instead of
letting SGLang serve without layered prefill.
"""

from __future__ import annotations

import logging
import multiprocessing

logger = logging.getLogger("sgl_layered")

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from sgl_layered.core.config import LayeredConfig

    from . import hooks, settings

    if multiprocessing.parent_process() is None:  # the launching process (launch_server / Engine owner)
        hooks.register(hooks.MAIN)
        return
    config = LayeredConfig.from_env()
    if config is None or not config.needs_plugin:
        return
    try:
        if config.enable_layered_prefill:
            settings.check_version()
        hooks.register(hooks.SCHEDULER, config)
    except Exception:
        logger.exception("sgl-layered: cannot install its hooks; refusing to start")
        raise SystemExit(1)  # SGLang's plugin loader swallows Exceptions; this one stops the child
