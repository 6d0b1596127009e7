"""The package's shape: the import graph's depth, one home per error class, notebooks inside the package."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import blm_lab

PACKAGE = Path(blm_lab.__file__).resolve().parent
MAX_LEVELS = 6  # the sixth: gpt_config under gpt, so that --help and the recipes need no torch


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The blm_lab modules ``path`` imports anywhere in it (function-level imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "blm_lab":
                continue
            for alias in node.names:  # `from . import container` imports a module, not a name
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "blm_lab")
    return {m for m in found if m in MODULES and m != name}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: project_imports(path) for name, path in MODULES.items()}


@functools.cache
def level(name: str) -> int:
    """1 for a module that imports no other blm_lab module, else 1 + the deepest level it imports."""
    return 1 + max((level(dep) for dep in GRAPH[name]), default=0)


def test_import_graph_has_at_most_six_levels():
    deepest = max(MODULES, key=level)
    chain = [deepest]
    while GRAPH[chain[-1]]:
        chain.append(max(GRAPH[chain[-1]], key=level))
    assert level(deepest) <= MAX_LEVELS, " -> ".join(chain)


def test_error_classes_live_in_errors():
    defined_elsewhere = []
    for name, path in MODULES.items():
        if name == "blm_lab.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                                                      for b in node.bases):
                defined_elsewhere.append(f"{name}.{node.name}")
    assert not defined_elsewhere


def test_notebooks_ship_inside_the_package():
    from blm_lab.workbench.runner import NOTEBOOKS, notebooks_dir

    assert all((notebooks_dir() / name).is_file() for name in NOTEBOOKS)


def test_an_installed_package_finds_its_notebooks(tmp_path):
    """Build the wheel, unpack it, and import blm_lab from there (outside the checkout): the notebooks come along."""
    import subprocess
    import sys
    import zipfile

    from conftest import REPO_ROOT

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(REPO_ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("blm_lab-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("from blm_lab.workbench.runner import NOTEBOOKS, notebooks_dir; d = notebooks_dir(); "
             "print(d); assert all((d / n).is_file() for n in NOTEBOOKS)")
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)})
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(site / "blm_lab" / "notebooks")
