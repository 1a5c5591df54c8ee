"""SGLang plugin entry point (placeholder until the hook table lands)."""


def register() -> None:
    return None
