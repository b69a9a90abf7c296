"""The package's folders are its architecture; these rules keep them so (read from each module's imports).

* only store/ touches HDF5 (h5py);
* learn/ works on stored features (store/ and fusion), never on extract/; extract/ never imports learn/;
* store/ and weights/ depend on no family above them (extract/, learn/, cli/); nothing imports cli/;
* nothing imports a private (_name) from another folder.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "videobert_cli"
TOP = "videobert_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                # `from . import planning` imports a module: record it as one.
                sub = f"{module}.{alias.name}"
                if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists():
                    found.append((sub, None))
                else:
                    found.append((module, alias.name))
    return found


def folder(module: str) -> str:
    """The family of a module of ours: cli, extract, store, learn, weights, or '' for the top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else ""


MODULES = sorted(PACKAGE.rglob("*.py"))
FORBIDDEN = {
    "learn": {"extract", "cli"},
    "extract": {"learn", "cli"},
    "store": {"extract", "learn", "cli"},
    "weights": {"extract", "learn", "store", "cli"},
    "": {"cli"},
}


def test_every_module_is_checked():
    families = {folder(module_name(p)) for p in MODULES}
    assert {"cli", "extract", "store", "learn", "weights", ""} <= families


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_architecture(path: Path):
    me = module_name(path)
    mine = folder(me)
    problems = []
    for module, name in imports(path):
        if module.split(".")[0] == "h5py" and mine != "store":
            problems.append("imports h5py (only store/ touches HDF5)")
        if not module.startswith(TOP + ".") and module != TOP:
            continue
        theirs = folder(module)
        if theirs in FORBIDDEN.get(mine, set()) and me != TOP + ".__main__":  # `python -m` starts the cli
            problems.append(f"imports {module} ({mine or 'top level'} must not depend on {theirs}/)")
        if name and name.startswith("_") and not name.startswith("__") and theirs != mine:
            problems.append(f"imports the private {module}.{name} from another folder")
    assert not problems, f"{me}: " + "; ".join(problems)
