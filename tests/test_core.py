"""Core ring: config validation, partitioning, the paper policy; and that it imports neither torch nor sglang."""

import json
import subprocess
import sys

import pytest

from sgl_layered.core.config import LayeredConfig, LayeredConfigError
from sgl_layered.core.partition import paper_group_count, split_layers
from sgl_layered.core.policy import CohortState, PaperPolicy, SchedulerView


def test_core_imports_neither_torch_nor_sglang():
    code = (
        "import sys\n"
        "import sgl_layered.core.config, sgl_layered.core.partition, sgl_layered.core.policy\n"
        "import sgl_layered.core.adaptive, sgl_layered.analysis.workloads, sgl_layered.analysis.latency\n"
        "import sgl_layered.analysis.expert_traffic, sgl_layered.sim.engine, sgl_layered.sim.sweep\n"
        "import sgl_layered.sim.calibrate\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sglang', 'numpy'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
    groups = policy.partition(new_tokens=700, num_layers=5)
    assert groups == ((0, 2), (2, 4), (4, 5))
    seen = []
    for step in range(3):
        view = SchedulerView(num_layers=5, decode_rows=4, waiting_requests=2,
                             cohorts=(CohortState(7, 700, groups, step),))
        assert not policy.may_admit(view)  # one cohort at a time
        plan = policy.plan(view)
        assert plan.decode_rows == 4
        (piece,) = plan.pieces
        seen.append(piece.layers)
        assert piece.final == (step == 2)
    assert seen == list(groups)
    assert policy.may_admit(SchedulerView(num_layers=5, decode_rows=4, waiting_requests=1))


def test_auto_policy_uses_prompt_length():
    policy = PaperPolicy(groups=None, tokens_per_group=512)
    assert len(policy.partition(new_tokens=1100, num_layers=5)) == 3
    assert len(policy.partition(new_tokens=10, num_layers=5)) == 1


@pytest.mark.parametrize("value", [0, -5, "256", True])
def test_chunk_tokens_must_be_positive_int(value):
    with pytest.raises(LayeredConfigError, match="layered-prefill-chunk-tokens must be a positive integer"):
        LayeredConfig(enable_layered_prefill=True, layered_prefill_chunk_tokens=value)


def test_chunk_tokens_need_layered_prefill():
    with pytest.raises(LayeredConfigError, match="layered-prefill-chunk-tokens has no effect without"):
        LayeredConfig(layered_prefill_chunk_tokens=256)
    assert LayeredConfig(enable_layered_prefill=True, layered_prefill_chunk_tokens=256).layered_prefill_chunk_tokens == 256
