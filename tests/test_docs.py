"""The README and docs/ point at things that exist: every relative link, and every
``bench/results/...`` path they name."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RESULTS_PATH = re.compile(r"bench/results/[\w./-]*[\w/]")


def _targets(doc: Path) -> list[tuple[str, Path]]:
    text = doc.read_text()
    found = [(m.group(1), doc.parent / m.group(1)) for m in LINK.finditer(text)
             if not re.match(r"[a-z]+://", m.group(1))]
    found += [(m.group(0), ROOT / m.group(0).rstrip(".")) for m in RESULTS_PATH.finditer(text)
              if "<" not in m.group(0)]
    return found


def test_every_link_and_results_path_exists():
    missing = [f"{doc.relative_to(ROOT)}: {name}" for doc in DOCS
               for name, target in _targets(doc) if not target.exists()]
    assert missing == []


def test_the_checker_sees_a_missing_target(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("see [x](docs/nope.md) and bench/results/nowhere/ and [y](https://a.b/c)")
    assert [name for name, target in _targets(doc)] == ["docs/nope.md", "bench/results/nowhere/"]


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
