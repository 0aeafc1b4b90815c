"""Shared pytest configuration and session-scoped fixtures.

Fixtures here build tiny models and datasets once per session in
`tmp_path_factory`, so test modules share them instead of rebuilding.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-large",
        action="store_true",
        default=False,
        help="run tests marked `large` (full-size, slow)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--run-large"):
        return
    skip_large = pytest.mark.skip(reason="large test: pass --run-large to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip_large)


@pytest.fixture(autouse=True)
def _isolate_keras_state():
    """Each test starts with fresh Keras names and the default float policy."""
    import keras

    yield
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session()
