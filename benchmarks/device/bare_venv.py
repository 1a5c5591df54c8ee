"""Make a bare virtual environment for rehearsing the device check: torch, triton and nothing SGLang brings.

    python benchmarks/device/bare_venv.py DIR        # prints DIR/bin/python

The GPU machine has Python, torch, triton and its own image's packages, and no SGLang or sgl_kernel. This
environment is built to be no richer than that where SGLang's import is concerned: `python -m venv
--without-pip` (no site-packages of the creating interpreter), then symbolic links into the creating
interpreter's site-packages for exactly these distributions and what their metadata requires (no extras):

  * torch, triton: what the kernel runs on;
  * numpy: Triton's interpreter imports it (the GPU image has it);
  * packaging, psutil: SGLang imports them, and torch or triton may import them too, so a stand-in is not safe
    (the GPU image has both);
  * msgspec: SGLang's runtime configuration, read by every fused-MoE call, is built from msgspec structs (not in
    the GPU image: carried there as a wheel by prepare.sh).

Links are made per top-level entry of each distribution's RECORD (its packages and its .dist-info), so
importlib.metadata sees the same versions. The NVIDIA library wheels share one `nvidia/` namespace folder;
torch's CUDA build loads them at import, so that folder is linked whole. Creating it takes well under a second
(links only); the interpreter must be the one whose site-packages hold these (the project's .venv).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

ROOTS = ("torch", "triton", "numpy", "packaging", "psutil", "msgspec", "dill")
STAMP = ".bare_venv_roots"


def _requires(dist: md.Distribution) -> list[str]:
    from packaging.requirements import Requirement

    names = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        names.append(req.name)
    return names


def closure(roots=ROOTS) -> list[md.Distribution]:
    """The installed distributions `roots` need at run time (declared requirements, transitively)."""
    seen, dists, todo = set(), [], list(roots)
    while todo:
        name = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # a requirement not installed here (e.g. a platform-only one) is not needed to import
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        dists.append(dist)
        todo += _requires(dist)
    return dists


def top_level_entries(dist: md.Distribution) -> set[str]:
    entries = set()
    for f in dist.files or []:
        head = f.parts[0]
        if head != ".." and not head.endswith(".pth"):
            entries.add(head)
    return entries


def make(target: Path) -> Path:
    target = Path(target).resolve()
    py = target / "bin" / "python"
    dists = closure()
    want = sorted(f"{d.metadata['Name']}=={d.version}" for d in dists)
    stamp = target / STAMP
    if py.exists() and stamp.exists() and stamp.read_text().split() == want:
        return py
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", "--clear", str(target)], check=True)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for dist in dists:
        src_site = Path(dist.locate_file(""))
        for entry in top_level_entries(dist):
            src, dst = src_site / entry, site / entry
            if src.exists() and not dst.exists():
                os.symlink(src, dst)
    stamp.write_text("\n".join(want) + "\n")
    return py


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(make(Path(sys.argv[1])))
