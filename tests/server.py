"""Tests start servers through the package's own launcher helper, with the CPU settings."""

from sgl_layered import cpu
from sgl_layered.serve import ServerProcess


def Server(model_path, extra_args=(), log_path=None, timeout_s=300, env=None):
    return ServerProcess(model_path, [*cpu.server_args(), *extra_args], timeout_s=timeout_s, log_path=log_path,
                         env=env)
