"""Protocol-independent request handling: find the version, check inputs, run.

Both front ends (REST and gRPC) find the version and signature with
`Predictor.resolve`, turn the request into numpy inputs (gRPC checks each
tensor's declared shape against the signature and the `RequestLimits` first,
with `check_declared_shape`) and call `Predictor.run`; every way a request
can be wrong ends here as a `ServingError` with an INVALID_ARGUMENT or
NOT_FOUND code, never as a crash.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf

from serving import signatures as signatures_lib
from serving.batching import DynamicBatcher
from serving.errors import ServingError, invalid_argument, not_found
from serving.model_store import LoadedVersion, ModelStore, SignatureInfo
from serving.server.image_header import ImageHeaderError, image_size

logger = logging.getLogger(__name__)

# With batching, once a `serving_default` request's frames have been
# refused by the decoder, the server decodes frames in the request threads
# (serving.frame_decoder) for this many seconds: bad frames then fail alone
# instead of failing a merged batch. Clean traffic keeps decoding in the
# graph, which is cheaper while nothing fails.
DECODE_IN_SERVER_S = 10.0


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Caps on the work one request may cause (each has a `selfy serve` flag).

    Args:
        max_batch_clips: most clips (batch rows) in one request
            (`--max-batch-clips`). Default 64.
        max_clip_frames: most frames per clip where the signature leaves the
            frame axis open (`--max-clip-frames`). Default 1024: a client
            may send a 30 s clip at 30 fps whole and let the graph sample it.
        max_frame_size: longest side, in pixels, of an encoded frame (read
            from its JPEG/PNG header before decoding) or of a raw frame
            where the signature takes any size (`--max-frame-size`).
            Default 4096.
        max_request_bytes: largest request body or message
            (`--max-request-mb`). Default 64 MiB.
    """

    max_batch_clips: int = 64
    max_clip_frames: int = 1024
    max_frame_size: int = 4096
    max_request_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{field.name}` must be a positive integer. Received: "
                    f"{field.name}={value!r}."
                )


def _describe_shape(shape: tf.TensorShape) -> str:
    return str(tuple(-1 if dim is None else dim for dim in shape.as_list()))


def check_declared_shape(
    name: str, spec: tf.TensorSpec, shape: Sequence[int], limits: RequestLimits
) -> None:
    """Checks a request tensor's shape against the signature and the caps.

    Runs before the tensor is built (gRPC) so a small message declaring a
    huge shape is refused without allocating it. Dims the signature leaves
    open (None / -1) accept any size from 1, within the caps: axis 0 is the
    batch (`max_batch_clips`), axis 1 the frames of a clip
    (`max_clip_frames`), further axes the height and width of raw frames
    (`max_frame_size`).

    Raises:
        ServingError: INVALID_ARGUMENT naming the input, the shape received,
            the shape expected, and the cap and its flag where one was hit.
    """
    shape = tuple(int(dim) for dim in shape)
    expected = _describe_shape(spec.shape)
    if any(dim < 0 for dim in shape):
        raise invalid_argument(f"Input `{name}` has a negative dimension: shape {shape}.")
    if spec.shape.rank is not None:
        if len(shape) != spec.shape.rank or not spec.shape.is_compatible_with(shape):
            raise invalid_argument(
                f"Input `{name}` has shape {shape} but the signature expects "
                f"{expected} (-1: any size)."
            )
        open_axes = [axis for axis, dim in enumerate(spec.shape.as_list()) if dim is None]
    else:
        open_axes = list(range(len(shape)))
    if shape and shape[0] == 0:
        raise invalid_argument(f"Input `{name}` has an empty batch: shape {shape}.")
    if 0 in shape:
        raise invalid_argument(
            f"Input `{name}` has an empty axis: shape {shape}. Every clip needs at "
            "least one frame of at least one pixel."
        )
    if shape and shape[0] > limits.max_batch_clips:
        raise invalid_argument(
            f"Input `{name}` holds {shape[0]} clips (shape {shape}); this server takes at "
            f"most {limits.max_batch_clips} per request (`selfy serve --max-batch-clips`). "
            "Send fewer clips per request."
        )
    for axis in open_axes:
        if axis == 1 and shape[axis] > limits.max_clip_frames:
            raise invalid_argument(
                f"Input `{name}` has {shape[axis]} frames per clip (shape {shape}); this "
                f"server takes at most {limits.max_clip_frames} "
                "(`selfy serve --max-clip-frames`)."
            )
        if axis >= 2 and shape[axis] > limits.max_frame_size:
            raise invalid_argument(
                f"Input `{name}` has {shape[axis]} pixels on axis {axis} (shape {shape}); "
                f"this server takes frames of at most {limits.max_frame_size} pixels a "
                "side (`selfy serve --max-frame-size`)."
            )
    if name == signatures_lib.FRAMES_INPUT_KEY and len(shape) == 5:
        _check_aspect_ratio(name, f"(shape {shape})", shape[2], shape[3])


def check_encoded_frames(name: str, frames: np.ndarray, limits: RequestLimits) -> None:
    """Checks every encoded frame's header: a complete JPEG/PNG, within the size cap.

    Args:
        name: the input name, for messages.
        frames: object array `[batch, num_frames]` of bytes.
        limits: the caps (`max_frame_size`).

    Raises:
        ServingError: INVALID_ARGUMENT naming the instance and the frame.
    """
    for index, data in np.ndenumerate(frames):
        where = f"instance {index[0]}, frame {index[1]}" if len(index) == 2 else f"element {index}"
        try:
            height, width = image_size(data)
        except ImageHeaderError as error:
            raise invalid_argument(
                f"Input `{name}` {where} cannot be decoded: {error}. Send JPEG or PNG frames."
            ) from error
        if max(height, width) > limits.max_frame_size:
            raise invalid_argument(
                f"Input `{name}` {where} is {width}x{height} pixels; this server decodes "
                f"frames of at most {limits.max_frame_size} pixels a side "
                "(`selfy serve --max-frame-size`). Resize frames before sending them."
            )
        _check_aspect_ratio(name, where, height, width)


def _check_aspect_ratio(name: str, where: str, height: int, width: int) -> None:
    """The graph's own limit, checked before a request can join a batch."""
    ratio = signatures_lib.MAX_FRAME_ASPECT_RATIO
    if max(height, width) > ratio * min(height, width):
        raise invalid_argument(
            f"Input `{name}` {where} is {width}x{height} pixels; frames may be at most "
            f"{ratio} times longer than wide or high (resizing the short side of a thin "
            "frame would make a huge image). Crop or pad frames before sending them."
        )


def check_inputs(
    signature: SignatureInfo,
    inputs: Mapping[str, np.ndarray],
    limits: RequestLimits = RequestLimits(),
) -> dict[str, np.ndarray]:
    """Checks names, dtypes, shapes and caps against the signature; returns cast arrays.

    Encoded frames (`frames_jpeg`) are checked from their headers here, so a
    bad one fails its own request before it can join a merged batch.

    Raises:
        ServingError: INVALID_ARGUMENT naming the input, the received value
            and what the signature expects.
    """
    expected = set(signature.inputs)
    received = set(inputs)
    unknown = sorted(received - expected)
    if unknown:
        raise invalid_argument(
            f"input tensor alias not found in signature: {', '.join(unknown)}. "
            f"Inputs expected to be in the set {{{', '.join(sorted(expected))}}}."
        )
    missing = sorted(expected - received)
    if missing:
        raise invalid_argument(
            f"Missing input tensor(s) for signature \"{signature.name}\": {', '.join(missing)}."
        )
    checked = {}
    for name, spec in signature.inputs.items():
        checked[name] = _check_one(name, spec, inputs[name], limits)
    return checked


def _check_one(
    name: str, spec: tf.TensorSpec, value: np.ndarray, limits: RequestLimits
) -> np.ndarray:
    value = np.asarray(value)
    check_declared_shape(name, spec, value.shape, limits)
    expected_shape = _describe_shape(spec.shape)
    if spec.dtype == tf.string:
        if value.dtype.kind == "U":
            value = np.vectorize(lambda text: text.encode("utf-8"), otypes=[object])(value)
        if value.dtype.kind not in ("O", "S") or not all(
            isinstance(item, bytes) for item in value.reshape(-1)
        ):
            raise invalid_argument(
                f"Input `{name}` must be a string tensor (binary values as {{\"b64\": ...}}) "
                f"of shape {expected_shape}. Received: a ragged or non-string value "
                f"of dtype {value.dtype}."
            )
        value = value.astype(object)
        if name == signatures_lib.JPEG_INPUT_KEY:
            check_encoded_frames(name, value, limits)
    else:
        dtype = spec.dtype.as_numpy_dtype
        if value.dtype.kind not in "iufb":
            raise invalid_argument(
                f"Input `{name}` must be numeric ({spec.dtype.name}) of shape "
                f"{expected_shape}. Received: a ragged or non-numeric value of dtype "
                f"{value.dtype}."
            )
        if spec.dtype.is_integer and value.size:
            info = np.iinfo(dtype)
            if value.dtype.kind == "f" and not np.all(np.isfinite(value) & (value == np.round(value))):
                raise invalid_argument(
                    f"Input `{name}` must hold integers ({spec.dtype.name}). Received: "
                    "non-integer numbers."
                )
            if value.min() < info.min or value.max() > info.max:
                raise invalid_argument(
                    f"Input `{name}` values must be in [{info.min}, {info.max}] "
                    f"({spec.dtype.name}). Received: values in "
                    f"[{value.min()}, {value.max()}]."
                )
        value = value.astype(dtype, copy=False)
    return value


def check_frames_decode(inputs: Mapping[str, np.ndarray]) -> None:
    """Decodes every encoded frame of one request, without the model; raises on the first failure.

    The batcher calls this only after a merged batch failed, to find the
    requests whose frames only the decoder refuses (a complete JPEG whose
    tables or data are damaged) without re-running the whole graph for each.

    Raises:
        tf.errors.InvalidArgumentError: for a frame the decoder refuses.
    """
    frames = inputs.get(signatures_lib.JPEG_INPUT_KEY)
    if frames is None:
        return
    _decode_each(tf.constant(frames.reshape(-1)))


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
def _decode_each(frames: tf.Tensor) -> tf.Tensor:
    # One graph call per request rather than an eager op (and a return to
    # Python) per frame, while the server's other threads want the GIL.
    return tf.map_fn(
        lambda data: tf.size(tf.io.decode_image(data, channels=3, expand_animations=False)),
        frames,
        fn_output_signature=tf.int32,
    )


class Predictor:
    """Answers predict / metadata / status requests for one model.

    Args:
        store: the `ModelStore` of the served model.
        batcher: a `DynamicBatcher`, or None to run each request on its own.
        limits: the `RequestLimits` every request is checked against.
    """

    def __init__(
        self,
        store: ModelStore,
        batcher: DynamicBatcher | None = None,
        limits: RequestLimits = RequestLimits(),
    ):
        self.store = store
        self.batcher = batcher
        self.limits = limits
        # time.monotonic() until which `serving_default` frames are decoded
        # in the request threads (see DECODE_IN_SERVER_S).
        self._decode_in_server_until = 0.0

    @property
    def model_name(self) -> str:
        return self.store.name

    def check_model_name(self, name: str) -> None:
        if name != self.store.name:
            raise not_found(f"Servable not found for request: Latest({name})")

    def version(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        self.check_model_name(name)
        return self.store.get(version=version, label=label)

    def resolve(
        self,
        name: str,
        signature_name: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> tuple[LoadedVersion, SignatureInfo]:
        """The version and signature a request names (to check inputs against).

        Raises:
            ServingError: NOT_FOUND for an unknown model or version;
                INVALID_ARGUMENT for an unknown signature.
        """
        loaded = self.version(name, version, label)
        return loaded, loaded.signature(signature_name)

    def run(
        self, loaded: LoadedVersion, signature: SignatureInfo, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Checks `inputs` (caps included), then runs them, batched if batching is on.

        With batching, `serving_default` frames are decoded in this thread
        (and the clips batched through `predict_frames`) for
        `DECODE_IN_SERVER_S` after the decoder refused a request's frames.

        Raises:
            ServingError: INVALID_ARGUMENT for bad inputs.
        """
        checked = check_inputs(signature, inputs, self.limits)
        if self.batcher is None:
            return loaded.run(signature.name, checked)
        is_jpeg = signature.name == signatures_lib.SERVING_DEFAULT
        try:
            if (
                is_jpeg
                and time.monotonic() < self._decode_in_server_until
                and loaded.frame_decoder is not None
            ):
                frames = {signatures_lib.FRAMES_INPUT_KEY: loaded.decode_frames(checked[signatures_lib.JPEG_INPUT_KEY])}
                return self._run_batched(loaded, signatures_lib.PREDICT_FRAMES, frames)
            return self._run_batched(loaded, signature.name, checked)
        except ServingError as error:
            if is_jpeg and error.code == grpc.StatusCode.INVALID_ARGUMENT:
                # Checked inputs the graph refuses: frames only the decoder sees are bad.
                self._decode_in_server_until = time.monotonic() + DECODE_IN_SERVER_S
            raise

    def _run_batched(
        self, loaded: LoadedVersion, signature_name: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        def run_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return loaded.run(signature_name, batch)

        return self.batcher.run(
            (loaded.version, signature_name), run_batch, inputs, check_function=check_frames_decode
        )
