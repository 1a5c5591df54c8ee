"""patches/ and the hook table name the same seams; every diff applies to the pinned SGLang; no drift."""

import inspect
import json
import pkgutil
import re
import subprocess
from pathlib import Path

import pytest
import sglang

from sgl_layered import SGLANG_PIN
from sgl_layered.adapter import hooks

PATCHES = Path(__file__).resolve().parent.parent / "patches"
SITE = Path(sglang.__file__).resolve().parent.parent
CATALOG = json.loads((PATCHES / "catalog.json").read_text())


def test_pinned_sglang_is_installed():
    assert sglang.__version__ == SGLANG_PIN


def test_catalog_and_hook_table_name_the_same_seams():
    in_catalog = [t for entry in CATALOG for t in entry["hooks"]]
    assert sorted(in_catalog) == sorted(h.target for h in hooks.HOOKS)
    assert len(set(in_catalog)) == len(in_catalog)
    for entry in CATALOG:
        assert entry["why"].strip() and entry["remove_when"].strip()
        assert (PATCHES / entry["patch"]).is_file()
    assert sorted(p.name for p in PATCHES.glob("*.patch")) == sorted(e["patch"] for e in CATALOG)


@pytest.mark.parametrize("patch", [e["patch"] for e in CATALOG])
def test_patch_applies_cleanly_to_pinned_sglang(patch):
    out = subprocess.run(["patch", "-p1", "--dry-run", "--force", "-d", str(SITE), "-i", str(PATCHES / patch)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILED" not in out.stdout and "fuzz" not in out.stdout and "offset" not in out.stdout


def test_patches_are_reproducible(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_patches", PATCHES / "make_patches.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(out_dir=tmp_path)
    for path in tmp_path.iterdir():
        assert path.read_text() == (PATCHES / path.name).read_text(), f"{path.name} is stale: rerun make_patches.py"


@pytest.mark.parametrize("hook", hooks.HOOKS, ids=lambda h: h.target)
def test_hook_targets_exist_in_pinned_sglang(hook):
    owner, attr = hook.target.rsplit(".", 1)
    assert hasattr(pkgutil.resolve_name(owner), attr)
    hooks.resolve_impl(hook)  # our side exists too


@pytest.mark.parametrize("name", hooks.IMPORTED)
def test_imported_sglang_names_exist(name):
    owner, attr = name.rsplit(".", 1)
    assert hasattr(pkgutil.resolve_name(owner), attr), f"{name} moved in SGLang"


def _assigned_attributes(cls) -> set:
    """Instance attributes an SGLang class (or a base of it) uses as `self.X`, and its dataclass fields and
    annotations: a renamed attribute disappears from these."""
    names = set(getattr(cls, "__dataclass_fields__", {}))
    for klass in inspect.getmro(cls):
        names |= set(getattr(klass, "__annotations__", {}))
        if klass.__module__.startswith("sglang"):
            names |= set(re.findall(r"self\.(\w+)", inspect.getsource(klass)))
    return names


@pytest.mark.parametrize("internal", hooks.SURFACE, ids=lambda i: f"{i.owner.rsplit('.', 1)[-1]}:{i.use}")
def test_every_sglang_internal_we_touch_exists_in_pinned_sglang(internal):
    """Methods and functions we call or override exist and are callable; attributes we read or write are assigned
    by the owning class (a renamed attribute would otherwise fail silently, e.g. a chunked abort never ending)."""
    owner = pkgutil.resolve_name(internal.owner)
    attributes = _assigned_attributes(owner) if inspect.isclass(owner) else set()
    for name in internal.names:
        if internal.use in (hooks.CALL, hooks.OVERRIDE):
            assert callable(getattr(owner, name, None)), f"{internal.owner}.{name} is gone or not callable"
        else:
            assert hasattr(owner, name) or name in attributes, f"{internal.owner}.{name} is no longer assigned"


def test_prefill_adder_takes_the_limits_we_lend():
    from sglang.srt.managers.schedule_policy import PrefillAdder

    from sgl_layered.adapter import admission

    params = inspect.signature(PrefillAdder).parameters
    assert admission.TOKEN_LIMIT in params and admission.CHUNK_SIZE in params


def _adapter_source(*names):
    root = Path(hooks.__file__).resolve().parent
    return "\n".join((root / n).read_text() for n in names) if names else \
        "\n".join(p.read_text() for p in root.glob("*.py"))


def _table(owner: str) -> set:
    return {n for i in hooks.SURFACE if i.owner == owner for n in i.names}


def test_hook_table_lists_every_scheduler_and_model_runner_name_the_adapter_touches():
    """The table is the whole surface: every `scheduler.X` / `model_runner.X` in the adapter, and every
    `self.X` of SGLang's Scheduler our subclass uses, is listed (and so drift-checked above)."""
    from sglang.srt.managers.scheduler import Scheduler

    from sgl_layered.adapter.scheduler import LayeredScheduler

    source = _adapter_source()
    scheduler_names = set(re.findall(r"scheduler\.(\w+)", source)) - {"Scheduler"}
    scheduler_names |= set(re.findall(r"\bs\.(\w+)", _adapter_source("layered_step.py")))
    ours = {n for n in vars(LayeredScheduler) if n not in vars(Scheduler)}  # our helper methods
    # Attributes our subclass assigns that SGLang's Scheduler never uses are our own state.
    ours |= set(re.findall(r"self\.(\w+)\s*=", _adapter_source("scheduler.py"))) - _assigned_attributes(Scheduler)
    subclass_names = set(re.findall(r"self\.(\w+)", _adapter_source("scheduler.py"))) - ours
    missing = (scheduler_names | subclass_names) - _table(hooks._SCHED)
    assert not missing, f"Scheduler names used but not in hooks.SURFACE: {sorted(missing)}"
    runner_names = {n for n in re.findall(r"model_runner\.(\w+)", source) if not n[0].isupper()}
    assert not runner_names - _table(hooks._RUNNER), sorted(runner_names - _table(hooks._RUNNER))


def test_scheduler_overrides_are_the_tables():
    """Every method our Scheduler subclass defines is an override listed in hooks.SURFACE (drift-checked above) or
    one of its own helpers: an override of a method SGLang renamed would otherwise silently never run."""
    from sgl_layered.adapter.scheduler import LayeredScheduler

    own = {n for n, v in vars(LayeredScheduler).items() if inspect.isfunction(v)}
    helpers = {"_check_resolved_settings", "_next_batch"}
    overrides = {n for i in hooks.SURFACE if i.use == hooks.OVERRIDE for n in i.names}
    assert own == overrides | helpers, (own - overrides - helpers, overrides - own)
