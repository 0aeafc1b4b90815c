"""Frame-by-frame inference of causal video models (streaming).

A causal model of the zoo (`create_model(name, causal=True)`, or any TSN
model) classifies each frame from that frame and the ones before it only.
`stream_model` turns it into a model that takes one frame and the state
left by the previous frames, and returns that frame's logits and the new
state, with the same weights (shared, not copied):

    >>> import numpy as np
    >>> from selfy_tf.models import create_model
    >>> from selfy_tf import streaming
    >>> model = create_model("selfy_tsm_r18.tiny", num_classes=5, causal=True)
    >>> stream = streaming.stream_model(model)
    >>> states = streaming.initial_states(stream, batch_size=1)
    >>> frame = np.zeros((1, 32, 32, 3), np.uint8)
    >>> logits, states = streaming.step(stream, frame, states)
    >>> logits.shape
    (1, 5)

Exactness: for a clip of `T` frames, step `t`'s logits are the causal
model's per-frame logits of frame `t` (before the average over frames), and
the mean of the `T` step logits is the model's clip logits. The states are
what the later frames need of the earlier ones: per residual block with a
temporal shift, the shifted channels of the previous frame
(`[batch, height, width, channels // 8]`); for the SELFY block, the STSS
input features of the last `L - 1` frames (`[batch, L - 1, h, w,
hidden_channels]`). docs/streaming.md lists their sizes.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from selfy_tf.layers.frame_preprocessing import FramePreprocessing
from selfy_tf.layers.segment_consensus import SegmentConsensus
from selfy_tf.layers.selfy_block import SELFYBlock
from selfy_tf.layers.temporal_shift import TemporalShift
from selfy_tf.ops import stss_last_frame

__all__ = ["FRAME_KEY", "LOGITS_KEY", "initial_states", "state_specs", "step", "stream_model"]

# Names of the stream model's frame input and logits output; the states are
# the other inputs and outputs, under the same names on both sides.
FRAME_KEY = "frame"
LOGITS_KEY = "logits"


class _StreamShift(keras.layers.Layer):
    """One step of the causal temporal shift.

    Channels `[0, fold)` come from the previous frame (the state), the others
    from this frame; the new state is this frame's channels `[0, fold)`.
    """

    def __init__(self, fold: int, **kwargs):
        super().__init__(**kwargs)
        self.fold = fold

    def call(self, inputs, previous):
        shifted = ops.concatenate([ops.cast(previous, inputs.dtype), inputs[..., self.fold :]], -1)
        return shifted, inputs[..., : self.fold]


class _StreamSELFY(keras.layers.Layer):
    """One step of a causal SELFY block, with the block's own weights.

    The block's STSS input features of this frame join the last `L - 1`
    frames' (the state); the causal STSS of this frame is computed from those
    `L` frames, then the block's extraction and integration (both frame by
    frame) and its residual.
    """

    def __init__(self, block: SELFYBlock, **kwargs):
        super().__init__(dtype=block.dtype_policy, **kwargs)
        self.block = block

    def call(self, inputs, history=None):
        transformation = self.block.stss_transformation
        hidden = ops.expand_dims(transformation.downsample(inputs, training=False), 1)
        frames = hidden if history is None else ops.concatenate(
            [ops.cast(history, hidden.dtype), hidden], axis=1
        )
        similarity = stss_last_frame(frames, transformation.window)
        similarity = ops.cast(similarity, transformation.compute_dtype)
        features = self.block.stss_extraction(similarity, training=False)
        motion = self.block.stss_integration(features, training=False)
        outputs = ops.relu(inputs + ops.cast(motion, inputs.dtype))
        if history is None:
            return outputs
        return outputs, frames[:, 1:]


def _not_causal(model: keras.Model, layer: keras.layers.Layer) -> ValueError:
    return ValueError(
        f"`stream_model` needs a causal model, but layer {layer.name!r} "
        f"({type(layer).__name__}) of {model.name!r} has causal=False: each frame's "
        "output would depend on later frames. Build the model with "
        "`create_model(name, ..., causal=True)` (offline weights load into it)."
    )


def stream_model(model: keras.Model) -> keras.Model:
    """The one-frame-at-a-time model of a causal video classifier.

    Walks the functional graph of `model` and rebuilds it for one frame:
    the frame preprocessing takes a single frame, each causal
    `TemporalShift` becomes a step that reads the previous frame's shifted
    channels from a state input, each causal `SELFYBlock` a step that keeps
    the STSS features of the last `L - 1` frames, and the average of the
    frame logits (`SegmentConsensus`) is dropped. Every other layer works
    frame by frame and is reused as it is, so the stream model shares the
    weights of `model`. It runs in inference mode (batch norm moving
    statistics, no dropout).

    Args:
        model: a Keras functional video classifier of the zoo whose
            temporal layers are causal (`create_model(..., causal=True)`;
            TSN models have none), input `[batch, num_frames, height, width, 3]`.

    Returns:
        A Keras model with dict inputs `{"frame": [batch, height, width, 3]
        uint8 RGB 0..255, <state name>: state, ...}` and dict outputs
        `{"logits": [batch, num_classes] float32, <state name>: new state,
        ...}`. `state_specs(stream)` lists the states.

    Raises:
        ValueError: if `model` is not a functional model starting with the
            frame preprocessing, or a temporal layer of it is not causal, or
            it holds a layer that mixes frames that this function does not
            know.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            "`model` must be a Keras functional model of the zoo "
            f"(`selfy_tf.models.create_model`). Received: {type(model).__name__}."
        )
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 5:
        raise ValueError(
            "`model` must take one clip input [batch, num_frames, height, width, 3]. "
            f"Received inputs of shapes {[tuple(x.shape) for x in model.inputs]}."
        )
    _, _, height, width, channels = model.inputs[0].shape
    frame = keras.Input(shape=(height, width, channels), dtype="uint8", name=FRAME_KEY)
    state_inputs: dict[str, Any] = {}
    state_outputs: dict[str, Any] = {}

    def replace(layer, args, kwargs):
        """The step's version of `layer` applied to `args`."""
        if isinstance(layer, FramePreprocessing):
            one_frame = FramePreprocessing(
                1, layer.scale, layer.mean, layer.std, dtype=layer.dtype_policy, name=layer.name
            )
            return one_frame(ops.expand_dims(args[0], 1))
        if isinstance(layer, TemporalShift):
            if not layer.causal:
                raise _not_causal(model, layer)
            inputs = args[0]
            fold = inputs.shape[-1] // layer.fold_div
            if fold == 0:
                return inputs
            state_inputs[layer.name] = keras.Input(
                shape=(*inputs.shape[1:3], fold), dtype=inputs.dtype, name=layer.name
            )
            outputs, state_outputs[layer.name] = _StreamShift(fold, name=f"{layer.name}_step")(
                inputs, state_inputs[layer.name]
            )
            return outputs
        if isinstance(layer, SELFYBlock):
            if not layer.causal:
                raise _not_causal(model, layer)
            inputs = args[0]
            step_layer = _StreamSELFY(layer, name=f"{layer.name}_step")
            length = layer.window[0]
            if length == 1:
                return step_layer(inputs)
            hidden_shape = layer.stss_transformation.compute_output_shape((None, *inputs.shape[1:]))
            name = f"{layer.name}_history"
            state_inputs[name] = keras.Input(
                shape=(length - 1, *hidden_shape[2:4], layer.hidden_channels),
                dtype=layer.compute_dtype,
                name=name,
            )
            outputs, state_outputs[name] = step_layer(inputs, state_inputs[name])
            return outputs
        if isinstance(layer, SegmentConsensus):
            return ops.cast(args[0], "float32")
        if hasattr(layer, "num_frames"):
            raise ValueError(
                f"`stream_model` does not know how to run layer {layer.name!r} "
                f"({type(layer).__name__}) of {model.name!r} one frame at a time."
            )
        return layer(*args, **kwargs)

    # The graph in topological order (deepest nodes first), as Keras's
    # functional model runs it, with each layer replaced by its step.
    tensors = {id(model.inputs[0]): frame}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or not node.operation:
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            kwargs.pop("training", None)
            outputs = replace(node.operation, args, kwargs)
            for reference, output in zip(node.outputs, keras.tree.flatten(outputs)):
                tensors[id(reference)] = output
    logits = tensors[id(model.outputs[0])]
    if tuple(logits.shape[1:]) != tuple(model.outputs[0].shape[1:]):
        raise ValueError(
            f"The stream of {model.name!r} gives logits of shape {tuple(logits.shape)}, "
            f"expected (batch, {model.outputs[0].shape[-1]})."
        )
    return keras.Model(
        inputs={FRAME_KEY: frame, **state_inputs},
        outputs={LOGITS_KEY: logits, **state_outputs},
        name=f"{model.name}_stream",
    )


def state_specs(stream: keras.Model) -> dict[str, tuple[tuple[int, ...], str]]:
    """The states of a stream model: name -> (shape without batch, dtype)."""
    inputs = stream.input
    if not isinstance(inputs, Mapping) or FRAME_KEY not in inputs:
        raise ValueError(
            "`stream` must be a model made by `selfy_tf.streaming.stream_model`. "
            f"Received: {getattr(stream, 'name', type(stream).__name__)!r}."
        )
    return {
        name: (tuple(int(size) for size in tensor.shape[1:]), keras.backend.standardize_dtype(tensor.dtype))
        for name, tensor in inputs.items()
        if name != FRAME_KEY
    }


def initial_states(stream: keras.Model, batch_size: int) -> dict[str, np.ndarray]:
    """The states at the start of a stream: zeros, as before a clip's first frame.

    Args:
        stream: a model made by `stream_model`.
        batch_size: int, the number of streams run side by side.

    Returns:
        Dict state name -> zero NumPy array `[batch_size, ...]`.

    Raises:
        ValueError: for a `batch_size` below 1 or a model that is not a stream.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}.")
    return {
        name: np.zeros((int(batch_size), *shape), dtype)
        for name, (shape, dtype) in state_specs(stream).items()
    }


def step(
    stream: keras.Model, frame: Any, states: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Runs one frame of a stream.

    Args:
        stream: a model made by `stream_model`.
        frame: uint8 RGB `[batch, height, width, 3]`, values 0..255.
        states: the states returned by the previous step, or
            `initial_states(stream, batch)` at the stream's start.

    Returns:
        `(logits, states)`: float32 `[batch, num_classes]` logits of this
        frame and the states for the next step (NumPy arrays).

    Raises:
        ValueError: for a frame of another dtype or shape, or states whose
            names or shapes do not fit the stream.
    """
    specs = state_specs(stream)
    frame = np.asarray(frame)
    expected = tuple(stream.input[FRAME_KEY].shape[1:])
    if frame.dtype != np.uint8 or frame.ndim != 4 or tuple(frame.shape[1:]) != expected:
        raise ValueError(
            f"`frame` must be uint8 RGB of shape (batch, {', '.join(map(str, expected))}). "
            f"Received: shape {tuple(frame.shape)}, dtype {frame.dtype}."
        )
    if set(states) != set(specs):
        raise ValueError(
            f"`states` must have the keys {sorted(specs)} (from `initial_states`). "
            f"Received: {sorted(states)}."
        )
    for name, (shape, _) in specs.items():
        received = tuple(np.shape(states[name]))
        if received != (frame.shape[0], *shape):
            raise ValueError(
                f"State {name!r} must have shape {(frame.shape[0], *shape)} for a batch of "
                f"{frame.shape[0]} frames. Received: {received}."
            )
    # The model's compiled predict function (traced once per batch size; XLA
    # where Keras turns it on): calling the model eagerly cost 20-30x as much
    # per frame (the tiny model: 60 against 2-4 ms).
    outputs = stream.predict_on_batch({FRAME_KEY: frame, **states})
    outputs = {name: np.asarray(value) for name, value in outputs.items()}
    logits = outputs.pop(LOGITS_KEY)
    return logits, outputs
