"""benchmarks/README.md's tables are what the saved data give: every generated block is recomputed from
benchmarks/results/ and compared, and a block edited by hand is caught."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_tables  # noqa: E402


def test_every_generated_block_matches_the_saved_data():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_tables.py"), "--check"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_a_hand_edited_number_is_caught_and_every_block_names_its_source():
    text = readme_tables.README_PATH.read_text()
    blocks = list(readme_tables.BLOCK.finditer(text))
    assert len(blocks) >= 10 and {m.group(2) for m in blocks} <= set(readme_tables.BLOCKS)
    for m in blocks:
        assert "(commit `" in m.group(3), f"block {m.group(2)} does not name its commit"
    name = "policies-repeated"
    (m,) = [b for b in blocks if b.group(2) == name]
    edited = text[:m.start(3)] + m.group(3).replace("11 |", "12 |", 1) + text[m.end(3):]
    assert edited != text and readme_tables.render(edited) == text
