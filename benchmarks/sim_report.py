"""The common tail of the simulator benchmarks: time the run, write <stem>.json and <stem>.md, print the table."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Callable

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sim")


def git_state() -> dict:
    """The commit the run started from and whether tracked files differed from it (then the code that ran is that
    commit plus uncommitted edits, usually the ones committed next with these results)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=here).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=here).stdout.strip())
        return {"commit": commit or "unknown", "worktree_dirty": dirty}
    except OSError:
        return {"commit": "unknown", "worktree_dirty": None}


def run_and_save(out_dir: str, stem: str, make_report: Callable[[], dict], table: Callable[[dict], str]) -> dict:
    t0 = time.time()
    git = git_state()
    report = make_report()
    report["wall_s"] = time.time() - t0
    report.update(git)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = table(report)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"\n({report['wall_s']:.0f} s; wrote {out_dir}/{stem}.json and .md)")
    return report
