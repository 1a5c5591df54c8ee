"""The ablation benchmark's quick mode runs end to end and writes its JSON, CSV and plots."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.engine
def test_ablation_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    for name in ("pareto.png", "expert_bytes.png", "rates.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(report["runs"]) > 0
    assert all(r["latency"]["errors"] == 0 for r in report["runs"])
    assert all(w["synthetic"] for w in report["workloads"].values())
    assert report["coverage_U"]
    for log in tmp_path.glob("server-*.log"):  # every mode ran torch_native's extend for the new rows only
        assert "extend attention computes new rows only" in log.read_text(), log.name

    def per_token(mode, workload):
        (run,) = [r for r in report["runs"] if r["routing"] == "model" and r["mode"] == mode
                  and r["workload"] == workload]
        return run["experts"]["prefill_bytes_per_token"]

    # arXiv-like prompts (~1.1k tokens) span several 512-token chunks: layered loads each expert once per layer.
    assert per_token("layered-auto", "arxiv-like") < per_token("chunked-512", "arxiv-like")
    calibrated = [r for r in report["runs"] if r["routing"] == "calibrated"]
    assert calibrated and all(r["experts"]["prefill_tokens"] > 0 for r in calibrated)

    # The README's generator reads each run back from the saved (gzipped) trace: the same iterations, so the same
    # expert bounds and regime as recorded live; runs sharing a server's trace do not overlap.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_tables
    from sgl_layered.analysis.regime import regime

    for r in report["runs"]:
        rows = readme_tables.trace_rows(str(tmp_path), r)
        assert rows and [rows[0]["iter"], rows[-1]["iter"]] == r["trace_iters"]
        assert readme_tables.expert_traffic.bounds(rows) == r["expert_bounds"] and regime(rows) == r["regime"]
        # Sent never before its scheduled arrival; the quick plan's client limit never binds.
        assert 0 <= readme_tables.max_client_wait(str(tmp_path), report, r) < 0.5, r["mode"]
        b = r["expert_bounds"]
        assert b["floor"] <= b["loaded"] and b["prompt_floor"] <= b["prompt"] <= b["loaded"], b
    for a in report["runs"]:
        for b in report["runs"]:
            if a is not b and (a["routing"], a["mode"]) == (b["routing"], b["mode"]):
                assert a["trace_iters"][1] < b["trace_iters"][0] or b["trace_iters"][1] < a["trace_iters"][0]


@pytest.mark.engine
def test_soak_smoke(tmp_path):
    """benchmarks/soak.py end to end for a few seconds: requests served, none lost, nothing leaked."""
    out_file = tmp_path / "soak.json"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.25", "--clients",
                          "6", "--interval", "5", "--out", str(out_file)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out_file.read_text())
    assert report["served"] > 10 and report["errors"] == 0
    assert report["leaked_kv_slots"] == 0 and report["leaked_request_slots"] == 0
    assert report["samples"] and all(s["rss_mib"] > 0 for s in report["samples"])
