"""The place-holder left where a batch norm was folded into a convolution."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="selfy")
class FoldedBatchNorm(keras.layers.Layer):
    """Stands where a batch norm was folded into the convolution before it.

    `selfy_tf.models.fold_batch_norms` moves each batch norm's inference
    transform into the kernel and bias of the convolution that feeds it and
    puts this layer in the batch norm's place, under the same name, so that
    layer names still mirror the PyTorch modules. It passes its input
    through. A folded model is for inference only: calling this layer with
    `training=True` raises, since the batch statistics it would need are gone.

    Input shape:
        Any.

    Output shape:
        Same as the input.

    Example:

    >>> layer = FoldedBatchNorm(name="layer1_0_bn1")
    >>> layer(np.ones((2, 4, 4, 8), "float32")).shape
    (2, 4, 4, 8)
    """

    def call(self, inputs, training=None, mask=None):
        if training:
            raise ValueError(
                f"`{self.name}` is a batch norm folded into the convolution before it: "
                "a model from `fold_batch_norms` is for inference only. Train the "
                "original model (or `create_model`) instead."
            )
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape
