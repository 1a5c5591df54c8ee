"""Start and stop `python -m sglang.launch_server` in a child process (benchmarks, tests, soak runs)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from sgl_layered import cpu


# The server's HTTP port is chosen here and bound by uvicorn only once the engine has started, so no other process
# may take it in between. bind(0) hands out ports of the kernel's ephemeral range, where the engine's own children
# listen too (gloo): one such port, released here, was taken by SGLang's scheduler before uvicorn bound it, and the
# server hung with "address already in use". SGLang keeps its late-bound port in 22000-29999 for the same reason;
# ours comes from between that range and the ephemeral one.
PORT_RANGE = (30000, 32767)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(attempts: int = 64) -> int:
    low, high = PORT_RANGE[0], min(PORT_RANGE[1], _ephemeral_low() - 1)
    candidates = random.sample(range(low, high + 1), min(attempts, high - low + 1)) if high >= low else []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no port left below the ephemeral range (a machine with an unusual port range)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class ServerProcess:
    def __init__(self, model_path: str, extra_args=(), timeout_s: float = 300, log_path=None, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path),
                    "--port", str(self.port), "--host", "127.0.0.1", *extra_args]
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **cpu.env_for_server_args(extra_args), **(env or {})}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise RuntimeError(f"server exited with {self.proc.returncode} during start-up"
                                   + (f" (log: {log_path})" if log_path else ""))
            if _healthy(self.url):
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError("server did not become healthy")

    def flush_cache(self, timeout_s: float = 60) -> None:
        """Empty the radix cache. SGLang refuses (HTTP 400) until the scheduler is idle, and it drops finished
        requests from its running batch only on its next iteration, so a flush sent right after the last
        response can be refused: retry until it succeeds or the timeout passes."""
        deadline = time.time() + timeout_s
        while True:
            req = urllib.request.Request(self.url + "/flush_cache", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    r.read()
                return
            except urllib.error.HTTPError as e:
                if e.code != 400 or time.time() > deadline:
                    raise
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._close_log()

    def _close_log(self):
        if self.log is not subprocess.DEVNULL and not self.log.closed:
            self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
