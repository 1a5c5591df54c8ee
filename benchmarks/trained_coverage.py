"""Routing coverage U(n) of the trained checkpoint beside the calibrated Zipf routing and a random-weight router.

U(n) = expected number of distinct experts per MoE layer that n tokens touch (mean over layers), measured on the
held-out fortunes (every 20th, never trained on) through `trained-qwen3-moe`'s own routers, two ways:
consecutive (n consecutive tokens of a 512-token window: one prompt's tokens, what a prefill pass loads) and
scattered (n tokens drawn from all windows: independent requests' tokens, as a decode batch). Beside it, on the
same tokens: the calibrated routing (`--layered-prefill-routing calibrated`, alpha 1.3, applied to the trained
router's logits, and the cost model's analytic curve) and build.py's random-weight router of the same shape.

    .venv/bin/python -m sgl_layered.models train trained-qwen3-moe     # once (minutes)
    .venv/bin/python benchmarks/trained_coverage.py                     # writes results/trained/coverage.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

HERE = os.path.dirname(os.path.abspath(__file__))


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=HERE).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "unknown"
    except OSError:
        return "unknown"


def table(report: dict) -> str:
    sizes = list(report["U"]["trained"]["consecutive"])
    rows = [("trained router, consecutive", report["U"]["trained"]["consecutive"]),
            ("trained router, scattered", report["U"]["trained"]["scattered"]),
            (f"calibrated (alpha {report['calibrated_alpha']}), consecutive", report["U"]["calibrated"]["consecutive"]),
            ("calibrated, scattered", report["U"]["calibrated"]["scattered"]),
            ("calibrated, analytic", report["U"]["calibrated_analytic"]),
            ("random-weight router, consecutive", report["U"]["random_weights"]["consecutive"]),
            ("random-weight router, scattered", report["U"]["random_weights"]["scattered"])]
    out = ["| routing | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    out += [f"| {name} | " + " | ".join(f"{u[n]:.1f}" for n in sizes) + " |" for name, u in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="trained-qwen3-moe")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "trained", "coverage.json"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()

    import torch

    from sgl_layered.models import build
    from sgl_layered.models.train import coverage_report

    if args.threads:
        torch.set_num_threads(args.threads)
    report = coverage_report(build(args.model))
    report = {"commit": git_commit(), **report}
    report["path"] = os.path.basename(report["path"])  # the cache directory's name (preset digest), not this host's
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"U(n), mean over {report['layers']} layers of distinct experts ({report['experts']} experts, "
          f"top-{report['top_k']}), {report['heldout_tokens']} held-out tokens:\n")
    print(table(report))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
