"""The tier contract of pyproject.toml (`lint-imports`, docs/architecture.md) fails on an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the `test` extra: pip install -e '.[test]'")

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("selfy_tf", "tfrecords", "trainer", "serving", "selfy_cli")


def _lint_imports(root: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": root}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache"],
        cwd=root, env=environment, capture_output=True, text=True, timeout=120,
    )


def test_an_upward_import_breaks_the_tier_contract(tmp_path):
    root = str(tmp_path)
    shutil.copy(os.path.join(REPOSITORY, "pyproject.toml"), root)
    for package in PACKAGES:
        shutil.copytree(
            os.path.join(REPOSITORY, package),
            os.path.join(root, package),
            ignore=shutil.ignore_patterns("__pycache__", "*.h5", "*.json"),
        )
    kept = _lint_imports(root)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "1 kept, 0 broken" in kept.stdout

    # A contract (the evaluation view) importing an app (the trainer).
    with open(os.path.join(root, "selfy_tf", "eval_view.py"), "a", encoding="utf-8") as handle:
        handle.write("\nimport trainer.train  # noqa: E402\n")
    broken = _lint_imports(root)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "selfy_tf.eval_view is not allowed to import trainer" in broken.stdout
