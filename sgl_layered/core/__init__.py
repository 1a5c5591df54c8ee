"""The core ring: configuration, layer partitioning, scheduling policy. Standard library only.

Nothing here imports torch or sglang (a test checks it in a fresh interpreter), so the same policy object
drives both the SGLang adapter and the simulator.
"""
