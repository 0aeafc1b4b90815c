"""The shims for files and flags of earlier versions (`selfy_tf.compat`).

Their uses are tested where they apply: older `.keras` files in
test_models.py, older `config.yaml` files in test_trainer_configs.py, the
deprecated `selfy export --resize-short` in test_cli_errors.py.
"""

from __future__ import annotations

from selfy_tf import __version__, compat


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


def test_the_shims_are_gone_by_their_removal_version():
    # Fails once the package reaches REMOVED_IN: delete selfy_tf/compat.py and its uses then.
    assert _release(__version__) < _release(compat.REMOVED_IN)


def test_model_stss_jit_moves_to_runtime_unless_runtime_sets_it():
    values = {"model": {"name": "selfy_tsm_r18", "stss_jit": False}, "train": {"epochs": 2}}
    moved = compat.move_model_stss_jit(values)
    assert moved == {"model": {"name": "selfy_tsm_r18"}, "train": {"epochs": 2}, "runtime": {"stss_xla": False}}
    assert values["model"] == {"name": "selfy_tsm_r18", "stss_jit": False}  # not changed in place
    explicit = {"model": {"stss_jit": False}, "runtime": {"stss_xla": True, "strategy": "none"}}
    assert compat.move_model_stss_jit(explicit)["runtime"] == {"stss_xla": True, "strategy": "none"}
    current = {"model": {"name": "selfy_tsm_r18"}}
    assert compat.move_model_stss_jit(current) is current


def test_layer_stss_jit_is_dropped_and_other_arguments_kept():
    kwargs = {"name": "selfy", "stss_jit": True, "dtype": "float32"}
    compat.drop_layer_stss_jit(kwargs)
    assert kwargs == {"name": "selfy", "dtype": "float32"}


def test_moved_modules_keep_their_old_import_path_with_a_warning():
    import importlib
    import sys

    import pytest

    for old_name, new_name in compat.MOVED_MODULES.items():
        sys.modules.pop(old_name, None)
        with pytest.warns(DeprecationWarning, match=new_name):
            old = importlib.import_module(old_name)
        assert old is importlib.import_module(new_name)
    from selfy_tf.eval_view import EvalView as moved
    from tfrecords.eval_view import EvalView

    assert EvalView is moved


def test_the_presets_keep_their_old_names_in_trainer_configs_with_a_warning():
    import pytest

    from trainer import configs, presets

    with pytest.warns(DeprecationWarning, match="trainer.presets.get_preset"):
        assert configs.get_preset is presets.get_preset
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        configs.no_such_name  # noqa: B018
