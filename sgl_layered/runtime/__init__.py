"""The runtime ring: torch, no sglang. Row bookkeeping and the activation stash between iterations."""
