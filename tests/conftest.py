"""Shared pytest configuration and session-scoped fixtures.

Fixtures here build tiny models and datasets once per session in
`tmp_path_factory`, so test modules share them instead of rebuilding.
"""

from __future__ import annotations

from selfy_tf.runtime import set_tensorflow_environment_defaults

# As the `selfy` command does: the tests run TensorFlow the way users do.
set_tensorflow_environment_defaults()

import pytest  # noqa: E402


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
    # free_memory=True adds a full gc.collect() (~0.6 s) to every test.
    keras.utils.clear_session(free_memory=False)


def _value_and_gradients(function, inputs, variables=(), seed=99):
    """`function(inputs)` and the gradients of `sum(output * weights)` with
    respect to `inputs` and `variables` (fixed random `weights`), on the
    current Keras backend (TensorFlow or JAX), as numpy arrays."""
    import keras
    import numpy as np
    from keras import ops

    output = function(ops.convert_to_tensor(inputs))
    weights = np.random.default_rng(seed).normal(size=tuple(output.shape)).astype("float32")
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensor = tf.convert_to_tensor(inputs)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            loss = tf.reduce_sum(tf.cast(function(tensor), tf.float32) * weights)
        gradients = tape.gradient(loss, [tensor, *[v.value for v in variables]])
    elif backend == "jax":
        import jax

        def loss(tensor, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                result = function(tensor)
            return ops.sum(ops.cast(result, "float32") * weights)

        gradient, variable_gradients = jax.grad(loss, argnums=(0, 1))(
            ops.convert_to_tensor(inputs), [variable.value for variable in variables]
        )
        gradients = [gradient, *variable_gradients]
    else:
        pytest.skip(f"gradients are tested on tensorflow and jax, not {backend}")
    return ops.convert_to_numpy(output), [
        None if g is None else ops.convert_to_numpy(ops.convert_to_tensor(g)) for g in gradients
    ]


@pytest.fixture
def value_and_gradients():
    """`value_and_gradients(function, inputs, variables=())` -> `(output,
    [d inputs, d variables...])` of `sum(function(inputs) * fixed weights)`,
    on TensorFlow or JAX (see `_value_and_gradients`)."""
    return _value_and_gradients


# Tiny zoo models (model zoo) -------------------------------------------------
TINY_WIDTH_MULTIPLIER = 0.125
TINY_SELFY_CHANNELS = 16


@pytest.fixture(scope="session")
def tiny_model_factory():
    """Builds tiny zoo models: `tiny_model_factory(name="selfy_tsm_r18", ...)`.

    Each call builds a fresh model (safe in function-scoped tests), with
    backbone widths x0.125 and SELFY widths (16, (1, 2, 8, 8), (8, 8, 8, 8)).
    Keyword arguments go to `selfy_tf.models.create_model`.
    """
    from selfy_tf.models import create_model

    def tiny_model(
        name: str = "selfy_tsm_r18",
        num_classes: int = 5,
        num_frames: int = 4,
        input_size: int = 32,
        **kwargs,
    ):
        kwargs.setdefault("width_multiplier", TINY_WIDTH_MULTIPLIER)
        kwargs.setdefault("selfy_channels", TINY_SELFY_CHANNELS)
        return create_model(
            name,
            num_classes=num_classes,
            num_frames=num_frames,
            input_size=input_size,
            **kwargs,
        )

    return tiny_model


# Exported tiny SavedModel (serving) ------------------------------------------
SERVING_LABELS = ("pushing", "pulling", "waving", "turning", "dropping")


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, tiny_model_factory):
    """One tiny `selfy_tsm_r18` exported once per session: `BASE/selfy/1`.

    Returns a namespace with `model` (the Keras model), `base` (the export
    base folder), `result` (the `ExportResult`) and `labels`. Treat `base`
    as read-only: copy it to add versions.
    """
    import types

    from selfy_tf.ops import stss_xla
    from serving.export import export_saved_model

    model = tiny_model_factory(num_classes=len(SERVING_LABELS))
    base = tmp_path_factory.mktemp("exported")
    # Exported with the STSS XLA switch on, as after training in the same
    # process: the export must leave it out of the graph.
    with stss_xla(True):
        result = export_saved_model(
            model, str(base), name="selfy", labels=list(SERVING_LABELS), top_k=3
        )
    return types.SimpleNamespace(
        model=model, base=str(base), result=result, labels=list(SERVING_LABELS)
    )
