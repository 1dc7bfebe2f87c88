"""Docstrings and comments in the library state contracts and reasons, never measurements: a
timing, a speed ratio or a results path there goes stale with the next run (numbers live in
bench/results/, the README quotes them)."""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted([*(ROOT / "kernels").glob("*.py"), *(ROOT / "ssgan").glob("*.py")])
MEASUREMENT = re.compile(
    r"\d(?:[\d.,]*\d)?\s*(?:ms|us|µs|ns)\b"          # 0.21 ms, 17.2 us
    r"|\d(?:[\d.]*\d)?x\s+(?:stock|faster|slower)"   # 1.6x stock
    r"|bench/results", re.IGNORECASE)


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring and comment in a module's source."""
    found = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(
        io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((node.body[0].lineno, doc))
    return found


def measurements(source: str) -> list[str]:
    return [f"line {line}: {m.group(0)!r}" for line, text in prose(source)
            for m in MEASUREMENT.finditer(text)]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_timings_ratios_or_result_paths_in_library_prose(path):
    assert measurements(path.read_text()) == [], f"{path}: move measurements to bench/results"


@pytest.mark.parametrize("planted", [
    '"""The block takes 0.21 ms at 128x64x8x8."""',
    'def f():\n    """Fast."""\n    # 17 us per call\n',
    'class A:\n    """1.6x stock on two threads."""\n',
    '"""See bench/results/cpu/kernels.md."""',
])
def test_the_check_catches_a_planted_measurement(planted):
    assert measurements(planted)


def test_the_check_leaves_contracts_alone():
    assert measurements('"""x: (N, C) float32; p in [0, 1); 2 ** 31 - 1 programs; 4 words."""\n'
                        "# eps 1e-3, as TensorFlow's default\n") == []
