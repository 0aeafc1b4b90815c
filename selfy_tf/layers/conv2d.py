"""Keras's Conv2D with faster training gradients on TensorFlow's CPU."""

from __future__ import annotations

import keras

from selfy_tf.ops import _backend


@keras.saving.register_keras_serializable(package="selfy")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose training input gradient is a forward convolution.

    The same layer, weights and forward computation as `keras.layers.Conv2D`.
    In a training call (`training=True`) on TensorFlow without a GPU, the
    input gradient of a large convolution is computed with forward
    convolutions, which TensorFlow's CPU kernels run up to several times
    faster than its own input-gradient kernel (`selfy_tf.ops._backend.conv2d`;
    which convolutions: `selfy_tf.ops._conv_gradient.supports`). Inference,
    other backends, small, dilated and grouped convolutions take
    `keras.layers.Conv2D`'s path, so exported and converted models hold the
    plain convolution. The backbones of the model zoo are built with it.

    Args:
        *args, **kwargs: those of `keras.layers.Conv2D`.

    Call arguments:
        inputs: `[batch, height, width, channels]` tensor (channels-last).
        training: bool, whether the call is part of a training step.

    Input shape:
        As `keras.layers.Conv2D`.

    Output shape:
        As `keras.layers.Conv2D`.

    Example:

    >>> layer = Conv2D(8, 3, padding="same", use_bias=False)
    >>> tuple(layer(keras.ops.ones((2, 16, 16, 3)), training=True).shape)
    (2, 16, 16, 8)
    """

    def call(self, inputs, training=None):
        if not (
            training
            and _backend.is_tensorflow()
            and self.data_format == "channels_last"
            and self.groups == 1
            and tuple(self.dilation_rate) == (1, 1)
            and self.strides[0] == self.strides[1]
        ):
            return super().call(inputs)
        outputs = _backend.conv2d(
            inputs, self.kernel, self.strides[0], self.padding.upper(), training=True
        )
        if self.use_bias:
            outputs = _backend.bias_add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
