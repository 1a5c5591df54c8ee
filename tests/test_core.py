"""Core ring: config validation, partitioning, the paper policy; and that it imports neither torch nor sglang."""

import json
import subprocess
import sys

import pytest

from sgl_layered.core.config import LayeredConfig, LayeredConfigError
from sgl_layered.core.partition import paper_group_count, split_layers
from sgl_layered.core.paper import PaperPolicy
from sgl_layered.core.step import CohortState, GroupRule, SchedulerView, Step, StepInvariantError, Waiting, check_step


def _imported_by(modules):
    """Top-level packages importing `modules` pulls in (in a fresh interpreter)."""
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.replace("'", '"')))


def _package_modules(package):
    import pkgutil

    import sgl_layered

    root = sgl_layered.__path__[0] + "/" + package
    return [f"sgl_layered.{package}.{m.name}" for m in pkgutil.iter_modules([root])]


def test_rings_core_imports_neither_torch_nor_sglang_runtime_no_sglang():
    """Core, analysis and simulator are standard-library only; the runtime is torch without SGLang; only the
    adapter imports SGLang (and nothing of the simulator)."""
    pure = _package_modules("core") + _package_modules("analysis") + _package_modules("sim")
    assert not _imported_by(pure) & {"torch", "sglang", "numpy"}
    assert "sglang" not in _imported_by(_package_modules("runtime"))
    import pathlib
    import re

    import sgl_layered

    root = pathlib.Path(sgl_layered.__path__[0])
    for path in root.rglob("*.py"):
        text = path.read_text()
        ring = path.relative_to(root).parts[0]
        if re.search(r"^\s*(from|import) sglang\b", text, re.M):
            assert ring == "adapter", f"{path} imports SGLang outside the adapter"
        if ring == "adapter":
            assert not re.search(r"sgl_layered\.sim\b|from \.\.sim\b", text), f"{path} imports the simulator"


@pytest.mark.parametrize("n,g", [(5, 2), (5, 3), (5, 5), (8, 3), (1, 1), (48, 7)])
def test_split_layers_covers_each_layer_once_in_order(n, g):
    ranges = split_layers(n, g)
    assert len(ranges) == g
    flat = [i for lo, hi in ranges for i in range(lo, hi)]
    assert flat == list(range(n))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("n,g", [(5, 0), (5, 6), (0, 1)])
def test_split_layers_rejects_bad_counts(n, g):
    with pytest.raises(ValueError):
        split_layers(n, g)


@pytest.mark.parametrize("tokens,expected", [(0, 1), (1, 1), (512, 1), (513, 2), (1500, 3), (100000, 8)])
def test_paper_rule(tokens, expected):
    assert paper_group_count(tokens, num_layers=8) == expected


@pytest.mark.parametrize("groups", [0, -1, "zero", "1.5", True])
def test_invalid_group_setting_names_the_flag(groups):
    with pytest.raises(LayeredConfigError, match="layered-prefill-groups"):
        LayeredConfig(enable_layered_prefill=True, layered_prefill_groups=groups)


def test_groups_above_layer_count_rejected():
    cfg = LayeredConfig(enable_layered_prefill=True, layered_prefill_groups="6")
    assert cfg.fixed_groups == 6
    with pytest.raises(LayeredConfigError, match="exceeds the model's 5 layers"):
        cfg.check_layers(5)
    cfg.check_layers(6)


def test_trace_directory_must_exist(tmp_path):
    with pytest.raises(LayeredConfigError, match="layered-prefill-trace"):
        LayeredConfig(layered_prefill_trace=str(tmp_path / "missing" / "t.jsonl"))
    assert LayeredConfig(layered_prefill_trace=str(tmp_path / "t.jsonl")).needs_plugin


def test_config_round_trips_through_json():
    cfg = LayeredConfig(enable_layered_prefill=True, layered_prefill_groups="AUTO", layered_prefill_group_tokens=256)
    assert cfg.layered_prefill_groups == "auto"
    assert LayeredConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(LayeredConfigError, match="unknown"):
        LayeredConfig.from_json(json.dumps({"bogus": 1}))


def test_paper_policy_runs_groups_in_order_then_finishes():
    policy = PaperPolicy(groups=3)
    admit = policy.schedule(SchedulerView(num_layers=5, decode_rows=4, waiting=Waiting(1, 700, 700))).admit
    groups = admit.groups.split(700, 5)
    assert groups == ((0, 2), (2, 4), (4, 5))
    seen = []
    for step in range(3):
        view = SchedulerView(num_layers=5, decode_rows=4, waiting=Waiting(2, 10, 20),
                             cohorts=(CohortState(7, 700, groups, step),))
        decision = policy.schedule(view)
        assert decision.admit is None  # one cohort at a time
        (piece,) = decision.pieces
        seen.append(piece.layers)
        assert piece.final == (step == 2)
    assert seen == list(groups)
    # With nothing in flight, admission is open even before a request waits: SGLang's own admission then moves
    # requests whose grammar compiled into the queue (it polls its grammar queue there).
    assert policy.schedule(SchedulerView(num_layers=5)).admit is not None
    assert policy.schedule(SchedulerView(num_layers=5, admission_open=False)).admit is None


def test_auto_policy_uses_prompt_length():
    admit = PaperPolicy(groups=None, tokens_per_group=512).schedule(SchedulerView(num_layers=5)).admit
    assert len(admit.groups.split(1100, 5)) == 3
    assert len(admit.groups.split(10, 5)) == 1


def test_step_invariants_are_checked():
    groups = ((0, 2), (2, 5))
    view = SchedulerView(num_layers=5, cohorts=(CohortState(1, 100, groups, 0),))
    with pytest.raises(StepInvariantError, match="exactly once"):
        check_step(view, Step(()))
    with pytest.raises(StepInvariantError, match="next group"):
        from sgl_layered.core.step import Piece

        check_step(view, Step((Piece(1, (2, 5), 100, True),)))
    with pytest.raises(ValueError, match="exactly one rule"):
        GroupRule(groups=2, tokens_per_group=512)


@pytest.mark.parametrize("value", [0, -5, "256", True])
def test_chunk_tokens_must_be_positive_int(value):
    with pytest.raises(LayeredConfigError, match="layered-prefill-chunk-tokens must be a positive integer"):
        LayeredConfig(enable_layered_prefill=True, layered_prefill_chunk_tokens=value)


def test_chunk_tokens_need_layered_prefill():
    with pytest.raises(LayeredConfigError, match="layered-prefill-chunk-tokens has no effect without"):
        LayeredConfig(layered_prefill_chunk_tokens=256)
    assert LayeredConfig(enable_layered_prefill=True, layered_prefill_chunk_tokens=256).layered_prefill_chunk_tokens == 256
