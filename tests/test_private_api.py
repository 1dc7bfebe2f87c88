"""The private-API boundary: every private torch or triton name the repository uses goes
through ``kernels/_private_api.py``, the checklist a torch or triton upgrade walks."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = ROOT / "kernels" / "_private_api.py"
SCANNED = ("ssgan", "kernels", "bench", "tests", "setup.py")
# a private module or name anywhere in a torch path (torch._dynamo, torch._C,
# torch.utils._pytree, ...), ``from torch... import _x``, and triton's runtime and compiler
PRIVATE = re.compile(r"\btorch(?:\.[A-Za-z]\w*)*\._[A-Za-z]\w*"
                     r"|\bfrom\s+torch(?:\.\w+)*\s+import\s+(?:\(\s*)?_[A-Za-z]"
                     r"|\btriton\.(?:runtime|compiler)\b")


def private_references(root: Path = ROOT) -> list[str]:
    """'path:line: text' of every private torch/triton reference outside the boundary module
    and the files it lists (code, strings and comments alike: a subprocess's code is a
    string)."""
    from ssgan.kernels._private_api import LISTED_USES
    found = []
    for entry in SCANNED:
        path = root / entry
        files = [path] if path.is_file() else sorted(path.rglob("*.py")) if path.is_dir() else []
        for file in files:
            if (file.resolve() in (BOUNDARY.resolve(), Path(__file__).resolve())
                    or str(file.relative_to(root)) in LISTED_USES):
                continue
            for number, line in enumerate(file.read_text().splitlines(), 1):
                if PRIVATE.search(line):
                    found.append(f"{file.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_no_private_name_outside_the_boundary():
    assert private_references() == []


def test_a_planted_reference_is_found(tmp_path):
    (tmp_path / "ssgan").mkdir()
    (tmp_path / "ssgan" / "planted.py").write_text(
        "import torch\n\ndef f():\n    return torch._dynamo.reset()\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "quiet.py").write_text(
        "import torch\nprint(torch.__version__, torch.compile)\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "sub.py").write_text(
        'CODE = "from torch.utils import _pytree"\nfrom triton.compiler import ASTSource\n')
    assert private_references(tmp_path) == [  # torch.__version__ is public
        "ssgan/planted.py:4: return torch._dynamo.reset()",
        'tests/sub.py:1: CODE = "from torch.utils import _pytree"',
        "tests/sub.py:2: from triton.compiler import ASTSource"]


def test_the_checklist_names_every_private_module_the_boundary_imports():
    """Each private module the boundary itself reaches is on its checklist (the docstring)."""
    text = BOUNDARY.read_text()
    checklist = text.split('"""')[1]
    used = {m.group(0) for m in PRIVATE.finditer(text.split('"""', 2)[2])
            if not m.group(0).startswith("from")}
    for name in used:
        assert name in checklist or name.rsplit(".", 1)[0] in checklist, name
