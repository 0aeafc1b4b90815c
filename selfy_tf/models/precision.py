"""Dtype policies of zoo models: build under one, or convert a built model."""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras

from selfy_tf.layers.segment_consensus import SegmentConsensus


def resolve_dtype_policy(dtype_policy: str | keras.DTypePolicy) -> keras.DTypePolicy:
    """The Keras `DTypePolicy` named by `dtype_policy`, with a clear error otherwise.

    Raises:
        ValueError: if `dtype_policy` is not a policy or a policy name.
    """
    try:
        return keras.dtype_policies.get(dtype_policy)
    except ValueError as error:
        raise ValueError(
            "`dtype_policy` must be a Keras dtype policy or its name, e.g. 'float32', "
            f"'mixed_bfloat16', 'mixed_float16'. Received: dtype_policy={dtype_policy!r} ({error})"
        ) from None


@contextlib.contextmanager
def global_dtype_policy(dtype_policy: str | keras.DTypePolicy | None) -> Iterator[None]:
    """Makes `dtype_policy` the global Keras policy inside the block (None: unchanged)."""
    if dtype_policy is None:
        yield
        return
    policy = resolve_dtype_policy(dtype_policy)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def with_dtype_policy(model: keras.Model, dtype_policy: str | keras.DTypePolicy) -> keras.Model:
    """A copy of a zoo model whose layers compute under `dtype_policy`, same weights.

    The copy equals `create_model(..., dtype_policy=dtype_policy)` with the
    weights of `model`: every layer takes the policy except the clip
    consensus, which keeps float32 logits. Use it to serve a model trained in
    float32 with bfloat16 compute on CPUs with AVX512-BF16 or AMX.

    Args:
        model: a functional model of the zoo (or loaded from its `.keras`).
        dtype_policy: a Keras dtype policy or its name, e.g. "mixed_bfloat16".

    Returns:
        A new functional model with the weights of `model`.

    Raises:
        ValueError: if `dtype_policy` is not a policy name.

    Example:

    >>> model = keras.models.load_model("runs/ssv1_selfy_r50/checkpoints/best.keras")
    >>> bf16 = with_dtype_policy(model, "mixed_bfloat16")
    """
    policy = resolve_dtype_policy(dtype_policy)

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if not isinstance(layer, SegmentConsensus):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy
