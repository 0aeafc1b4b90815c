"""`ViewAveraging`: multi-view validation inside `model.fit`, as `selfy eval` scores."""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["ViewAveraging"]


@keras.saving.register_keras_serializable(package="selfy")
class ViewAveraging(keras.Model):
    """Runs a clip classifier on single clips, and on several views of a video at once.

    Training feeds clips `[batch, num_frames, height, width, 3]`: the output
    is `network`'s logits. Validation with `data.validation_num_clips x
    data.validation_num_crops` views feeds `[batch, num_views, num_frames,
    height, width, 3]`: every view is classified, the views' softmax scores
    are averaged per video (what `selfy eval --num-clips --num-crops` does),
    and the output is the log of that average. Those log-probabilities are
    logits of the averaged distribution (their softmax is the average), so
    the compiled `from_logits` loss and the accuracy metrics score it as
    they score logits. The trainer saves `network`, never this wrapper.

    Args:
        network: the clip classifier (a Keras model giving logits).
        num_views: views per video in validation, at least 2.

    Call arguments:
        inputs: uint8 clips `[batch, num_frames, height, width, 3]`, or
            videos `[batch, num_views, num_frames, height, width, 3]`.
        training: passed to `network`.

    Output shape:
        `[batch, num_classes]`: logits, or log averaged probabilities (float32).
    """

    def __init__(self, network: keras.Model, num_views: int, **kwargs):
        super().__init__(**kwargs)
        num_views = int(num_views)
        if num_views < 2:
            raise ValueError(f"`num_views` must be at least 2. Received: num_views={num_views}.")
        self.network = network
        self.num_views = num_views

    def call(self, inputs, training=None):
        if len(inputs.shape) != 6:
            return self.network(inputs, training=training)
        clip_shape = tuple(inputs.shape[2:])
        clips = ops.reshape(inputs, (-1, *clip_shape))
        logits = ops.cast(self.network(clips, training=training), "float32")
        log_probabilities = ops.reshape(ops.log_softmax(logits, axis=-1), (-1, self.num_views, logits.shape[-1]))
        # log(mean_v p_v) = logsumexp_v(log p_v) - log(num_views), without
        # the underflow of log(mean(softmax)) for a class every view rules out.
        return ops.logsumexp(log_probabilities, axis=1) - math.log(self.num_views)

    def compute_output_shape(self, input_shape):
        return self.network.compute_output_shape((None, *tuple(input_shape)[-4:]))

    def get_config(self):
        config = super().get_config()
        config.update({"network": keras.saving.serialize_keras_object(self.network), "num_views": self.num_views})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
