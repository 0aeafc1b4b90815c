"""The import contracts of pyproject.toml (`lint-imports`, docs/architecture.md) fail on a bad import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the `test` extra: pip install -e '.[test]'")

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("selfy_tf", "tfrecords", "trainer", "serving", "selfy_cli")


def _copy_packages(root: str) -> None:
    shutil.copy(os.path.join(REPOSITORY, "pyproject.toml"), root)
    for package in PACKAGES:
        shutil.copytree(
            os.path.join(REPOSITORY, package),
            os.path.join(root, package),
            ignore=shutil.ignore_patterns("__pycache__", "*.h5", "*.json"),
        )


def _lint_imports(root: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": root}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache"],
        cwd=root, env=environment, capture_output=True, text=True, timeout=120,
    )


def test_an_upward_import_breaks_the_tier_contract(tmp_path):
    root = str(tmp_path)
    _copy_packages(root)
    kept = _lint_imports(root)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "2 kept, 0 broken" in kept.stdout

    # A contract (the evaluation view) importing an app (the trainer).
    with open(os.path.join(root, "selfy_tf", "eval_view.py"), "a", encoding="utf-8") as handle:
        handle.write("\nimport trainer.train  # noqa: E402\n")
    broken = _lint_imports(root)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "selfy_tf.eval_view is not allowed to import trainer" in broken.stdout


def test_an_app_import_anywhere_in_selfy_tf_breaks_the_package_contract(tmp_path):
    root = str(tmp_path)
    _copy_packages(root)
    # A new module that no tier lists: only the package-wide contract sees it.
    with open(os.path.join(root, "selfy_tf", "new_helper.py"), "w", encoding="utf-8") as handle:
        handle.write("from tfrecords import video  # noqa: F401\n")
    broken = _lint_imports(root)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "1 kept, 1 broken" in broken.stdout
    assert "selfy_tf is not allowed to import tfrecords" in broken.stdout
    assert "selfy_tf.new_helper -> tfrecords.video" in broken.stdout


def _package_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph `edges`, as a list of nodes, or None."""
    visiting, done = [], set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(edges.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(edges):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_the_cycle_check_finds_a_cycle():
    assert _package_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _package_cycle({"a": {"b", "c"}, "b": {"c"}}) is None


def test_the_top_level_packages_import_each_other_without_a_cycle():
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the `test` extra)")
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)
    edges: dict[str, set[str]] = {}
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            source, target = importer.split(".")[0], imported.split(".")[0]
            if source != target:
                edges.setdefault(source, set()).add(target)
    assert _package_cycle(edges) is None, f"import cycle between packages: {_package_cycle(edges)}"
    # The core is the ground floor: it imports no other package.
    assert "selfy_tf" not in edges, edges.get("selfy_tf")
