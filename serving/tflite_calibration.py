"""Representative (calibration) clips for full-integer TFLite quantization.

The int8 converter runs the float model on a few real clips to record the
range of every activation. The clips come from TFRecord shards written by
`selfy tfrecords build` / `tfrecords.write_split`, read by the evaluation
input pipeline (`tfrecords.make_dataset(training=False)`: centre frames,
centre crop), so they look like what the model sees at inference.

Example:

```python
from serving import tflite, tflite_calibration

from selfy_tf.eval_view import EvalView

dataset = tflite_calibration.representative_dataset("data/ssv1", EvalView(num_frames=8, crop_size=224), num_clips=100)
model_bytes = tflite.convert_model(model, quantize="int8", representative_dataset=dataset)
```
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

if TYPE_CHECKING:
    from selfy_tf.eval_view import EvalView

logger = logging.getLogger(__name__)

DEFAULT_NUM_CLIPS = 100
# Splits tried, in order, when `data` is a directory and no split is named.
PREFERRED_SPLITS = ("validation", "train")


def calibration_files(data: str, split: str | None = None) -> str:
    """The TFRecord glob pattern calibration clips are read from.

    Args:
        data: a dataset directory holding `<split>-0000k-of-0000N.tfrecord`
            shards, or a glob pattern / file of TFRecord shards.
        split: split to read when `data` is a directory; default: the first
            of `PREFERRED_SPLITS` present, else every shard in it.

    Returns:
        A glob pattern matching at least one file.

    Raises:
        FileNotFoundError: if `data` matches no TFRecord file (or `split` has
            no shard in the directory).
    """
    import tensorflow as tf

    if os.path.isdir(data):
        candidates = [split] if split else list(PREFERRED_SPLITS)
        for name in candidates:
            pattern = os.path.join(data, f"{name}-*.tfrecord")
            if tf.io.gfile.glob(pattern):
                return pattern
        if split:
            raise FileNotFoundError(
                f"no shard of split `{split}` in {data}. Expected files named "
                f"{split}-00000-of-0000N.tfrecord."
            )
        pattern = os.path.join(data, "*.tfrecord")
    else:
        pattern = data
    if not tf.io.gfile.glob(pattern):
        raise FileNotFoundError(
            f"calibration data `{data}` matches no TFRecord file. Expected a dataset "
            "directory written by `selfy tfrecords build` or a glob pattern such "
            "as 'DIR/validation-*.tfrecord'."
        )
    return pattern


def representative_dataset(
    data: str,
    view: "EvalView",
    num_clips: int = DEFAULT_NUM_CLIPS,
    input_dtype: str = "uint8",
    split: str | None = None,
) -> Callable[[], Iterable[dict[str, np.ndarray]]]:
    """A representative dataset for `tflite.convert_model(quantize="int8")`.

    Args:
        data: dataset directory or TFRecord glob pattern (see
            `calibration_files`).
        view: the model's evaluation view (`selfy_tf.eval_view.EvalView`:
            frames per clip, crop side, resize rule); one view per clip is
            read, whatever its `num_clips` / `num_crops`.
        num_clips: how many clips to calibrate on (fewer if the data holds
            fewer), default 100.
        input_dtype: dtype of the converted model's `frames` input.
        split: split to read from a dataset directory.

    Returns:
        A callable that yields `{"frames": array [1, view.num_frames,
        view.crop_size, view.crop_size, 3]}` once per clip.

    Raises:
        FileNotFoundError: if no TFRecord file matches.
        ValueError: for `num_clips < 1` or a bad `input_dtype`.
    """
    # The converter (TensorFlow and Keras) only when calibrating: `selfy
    # tflite --help` reads this module's defaults.
    from serving import tflite

    tflite.check_input_dtype(input_dtype)
    if isinstance(num_clips, bool) or not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(
            f"`num_clips` must be a positive integer. Received: num_clips={num_clips!r}."
        )
    pattern = calibration_files(data, split)

    def generate() -> Iterable[dict[str, np.ndarray]]:
        import tfrecords

        one_view = dataclasses.replace(view, num_clips=1, num_crops=1)
        dataset = tfrecords.make_dataset(pattern, training=False, batch_size=1, eval_view=one_view).take(num_clips)
        count = 0
        for frames, _ in dataset.as_numpy_iterator():
            count += 1
            yield {tflite.FRAMES_INPUT_KEY: frames.astype(input_dtype)}
        logger.info("calibrated on %d clips from %s", count, pattern)

    return generate
