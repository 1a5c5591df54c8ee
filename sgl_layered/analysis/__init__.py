"""Benchmark analysis (standard library only): workloads, latency/SLO metrics, expert traffic."""
