"""The packages' import boundaries, read statically from the source (no import runs, so this
holds on a machine without ROS or the nuScenes devkit): simplebev_ros is a thin adapter that
imports nothing from training (a deployed node ships without it), and simplebev_core imports
neither the adapter, nor training, nor ROS, nor the devkit."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "simplebev_ros": {"training", "nuscenes"},
    "simplebev_core": {"training", "simplebev_ros", "nuscenes", "rclpy"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a module imports anywhere (function-local imports too);
    relative imports stay inside the package and are not listed."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_its_boundary(package):
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules
    crossing = {str(m.relative_to(REPO)): sorted(imported_packages(m) & FORBIDDEN[package])
                for m in modules}
    assert not {m: names for m, names in crossing.items() if names}


def test_the_check_sees_function_local_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from training.metrics import x\n    import nuscenes.a\n"
                      "from . import sibling\n")
    assert imported_packages(module) == {"training", "nuscenes"}
