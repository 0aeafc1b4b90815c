"""Strategy selection, XLA choice and the multi-worker log-reduction fix (in-process parts)."""

from __future__ import annotations

import pytest
import tensorflow as tf

from trainer import strategy as strategy_lib
from trainer.train import resolve_jit_compile


def test_one_cpu_gives_the_default_strategy():
    strategy = strategy_lib.make_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert strategy_lib.is_chief(strategy) and strategy_lib.worker_index(strategy) == 0


def test_bad_strategy_names_and_missing_tf_config(monkeypatch):
    with pytest.raises(ValueError, match=r"`runtime.strategy` must be .* Received: 'horovod'"):
        strategy_lib.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        strategy_lib.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        strategy_lib.make_strategy("multi_worker")


def test_xla_is_explicit_and_off_on_cpu():
    assert resolve_jit_compile(True) is True
    assert resolve_jit_compile(False) is False
    expected = bool(tf.config.list_logical_devices("GPU"))
    assert resolve_jit_compile(None) is expected


def test_scalar_logs_reduce_without_an_axis():
    # Keras's multi-worker path calls strategy.reduce("MEAN", v, axis=0);
    # the fix uses axis=None for scalars and leaves the rest to Keras.
    calls = []

    class FakeStrategy:
        def reduce(self, op, value, axis):
            calls.append((op, tuple(value.shape), axis))
            return value

    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    original_check = keras_tf_trainer._collective_all_reduce_multi_worker
    keras_tf_trainer._collective_all_reduce_multi_worker = lambda strategy: True
    try:
        reduce = strategy_lib._reduce_per_replica(lambda values, strategy, reduction: "original")
        reduce({"loss": tf.constant(1.0), "scores": tf.zeros((2, 3))}, FakeStrategy(), "auto")
        assert sorted(calls) == [("MEAN", (), None), ("MEAN", (2, 3), 0)]
        assert reduce({}, FakeStrategy(), "concat") == "original"
    finally:
        keras_tf_trainer._collective_all_reduce_multi_worker = original_check
