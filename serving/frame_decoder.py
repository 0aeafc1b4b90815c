"""Decoding a version's encoded frames outside its graph, as its `serving_default` does.

With dynamic batching on, once the decoder has refused a request's frames
(a complete JPEG whose tables or data are damaged: the header check before
batching passes it), the server decodes each `serving_default` request in
the request's own thread for a while (`predictor.DECODE_IN_SERVER_S`) and
batches the decoded clips through `predict_frames` (which only samples
frames already at the crop size, and a decoded clip holds exactly the
frames it takes). A bad frame then fails its own request before it can
join, and break, a merged batch, where it would cost the batch a failed
run, a check of each request and a re-run. Clean traffic decodes in the
graph: a separate decoding call costs 2-8 % of throughput.

The decoder is built from the version's view record
(`assets.extra/selfy.json`, written by `selfy export`) and the same
`signatures.decode_frames` the exporter put in the graph. A version uses it
only when a probe clip gets the same logits both ways (`probe_clip`,
checked the first time the decoder is needed, not at load); a
version without the record, without `predict_frames`, or whose probe
differs runs `serving_default` whole, as TF Serving would.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from selfy_tf import run_dir
from selfy_tf.eval_view import view_from_clip_shape
from serving import signatures as signatures_lib


class FrameDecoder:
    """`serving_default`'s frame sampling, decoding, resize and crop on its own.

    Args:
        config: the signature configuration of the version (its view).

    Example:

    ```python
    decoder = FrameDecoder.from_saved_model("exported/selfy/1")
    clips = decoder(np.array([[jpeg_0, jpeg_1, jpeg_2]], dtype=object))
    ```
    """

    def __init__(self, config: signatures_lib.SignatureConfig):
        self.config = config
        # Called as a concrete function: tf.function's argument binding would
        # add to every request. Not unrolled over the frames, although that
        # would save a tenth of the decoding: a frame the decoder refuses then
        # fails in the top-level graph, and TensorFlow formats the error with
        # the Python stack of every op in it (~5 ms a request, against ~0.8 ms
        # from inside the loop's body).
        self._decode = tf.function(
            lambda frames_jpeg: signatures_lib.decode_frames(frames_jpeg, config)
        ).get_concrete_function(tf.TensorSpec([None, None], tf.string))

    @classmethod
    def from_saved_model(cls, saved_model_dir: str) -> "FrameDecoder | None":
        """The decoder of an exported version, or None when it has no view record.

        Raises:
            ValueError: for a view record that cannot be read, naming it.
        """
        info = run_dir.read_saved_model_info(saved_model_dir)
        clip_shape = run_dir.saved_model_clip_shape(info)
        if clip_shape is None:
            return None
        view = view_from_clip_shape(clip_shape, info.get("eval_view"))
        return cls(signatures_lib.SignatureConfig(view=view, top_k=1))

    def __call__(self, frames_jpeg: np.ndarray) -> np.ndarray:
        """Decodes `[batch, frames]` encoded frames to uint8 `[batch, num_frames, size, size, 3]`.

        Raises:
            tf.errors.InvalidArgumentError: for a frame the decoder refuses,
                as the graph would.
        """
        return self._decode(tf.constant(frames_jpeg, dtype=tf.string)).numpy()


def probe_clip(config: signatures_lib.SignatureConfig) -> np.ndarray:
    """A `[1, frames]` clip of JPEG frames that exercises sampling, resize and crop.

    One more frame than the model takes (so sampling drops one), each
    larger than the crop and neither square nor at the view's size.
    """
    size = config.input_size
    height, width = size + 11, 2 * size + 5
    rng = np.random.default_rng(0)
    frames = [
        tf.io.encode_jpeg(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).numpy()
        for _ in range(config.num_frames + 1)
    ]
    return np.array([frames], dtype=object)
