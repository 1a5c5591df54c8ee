"""patches/ and the hook table name the same seams; every diff applies to the pinned SGLang; no drift."""

import inspect
import json
import pkgutil
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


@pytest.mark.parametrize("name", hooks.CALLED)
def test_called_sglang_names_exist(name):
    owner, attr = name.rsplit(".", 1)
    assert hasattr(pkgutil.resolve_name(owner), attr), f"{name} moved in SGLang"


def test_scheduler_overrides_exist_on_sglang_scheduler():
    """An override of a method SGLang renamed would silently never run."""
    from sglang.srt.managers.scheduler import Scheduler

    from sgl_layered.adapter.scheduler import LayeredScheduler

    own = [n for n, v in vars(LayeredScheduler).items() if inspect.isfunction(v) and not n.startswith("__")]
    ours = {n for n in own if n.startswith("_check")}  # helpers of our own
    missing = [n for n in own if n not in ours and not hasattr(Scheduler, n)]
    assert not missing, f"LayeredScheduler overrides methods SGLang no longer has: {missing}"
