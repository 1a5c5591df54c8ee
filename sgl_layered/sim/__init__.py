"""Discrete-event simulator that drives the same scheduling policies as the SGLang adapter, with a cost model
instead of a GPU. Standard library only (part of the core ring)."""
