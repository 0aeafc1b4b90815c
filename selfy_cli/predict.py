"""`selfy predict`: classify a video with a served model or a local one.

    selfy predict clip.mp4 --server http://127.0.0.1:8501
    selfy predict clip.mp4 --server grpc://127.0.0.1:8500 --name selfy
    selfy predict clip.mp4 --model exported/selfy
    selfy predict frames_dir/ --model runs/selfy_r18
    selfy predict clip.mp4 --model runs/causal --stream --smooth 8

VIDEO is a video file, a folder of frame images or a `.npy` clip. With
`--server` or an exported SavedModel its frames go as JPEGs to the
`serving_default` signature; with a run directory or a `.keras` file the
Keras model runs here. Either way frames are sampled, resized and cropped
with the model's evaluation view (as `selfy eval`). Prints one line per
top-k class (`rank<TAB>score<TAB>label`), or a JSON object with `--json`.

With `--stream` (a causal model: a run, a `.keras` file, a `.tflite` stream,
or a SavedModel / server exported with `--stream`) every frame goes through
the model's stream in order, and it prints a timeline, one line per frame:
`time_s<TAB>label<TAB>score`, the probabilities averaged over the last
`--smooth` frames.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

from selfy_cli._help import HelpFormatter
from selfy_cli._options import MODEL_HELP

# Classes printed for a Keras model (a SavedModel returns its exported top-k).
KERAS_TOP_K = 5


def register_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify a video with a served or exported model",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "video",
        metavar="VIDEO",
        help="video file (any format PyAV reads), folder of frame images, or .npy array "
        "[frames, height, width, 3]",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="server URL: http://HOST:PORT (REST) or grpc://HOST:PORT (gRPC)",
    )
    source.add_argument("--model", metavar="MODEL", default=None, help=MODEL_HELP)
    parser.add_argument("--name", default="selfy", help="model name on the server (with --server)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="run a causal model frame by frame and print a timeline (docs/streaming.md)",
    )
    parser.add_argument(
        "--smooth", type=int, default=1, metavar="N",
        help="with --stream: average the probabilities over the last N frames",
    )
    parser.add_argument(
        "--fps", type=float, default=None,
        help="with --stream: frame rate for the time column (default: the video's, else 25)",
    )
    parser.set_defaults(handler=run)


def _server_failure(error: Exception, server: str, name: str) -> str | None:
    """One line saying what went wrong talking to `server` and what to do, or
    None for an error that is not about the server (a bad video path)."""
    import grpc

    from serving.client import ClientError

    start_hint = "start one with `selfy serve BASE` or check the host and port of --server"
    if isinstance(error, ClientError):
        if error.status in (404, grpc.StatusCode.NOT_FOUND):
            return (
                f"the server at {server} has no model named {name!r} ({error.message}). "
                "Check --name: it is the folder name under the served BASE (or, if the "
                "name is right, no version of it has loaded yet)."
            )
        if error.status == grpc.StatusCode.UNAVAILABLE and "connect" in error.message.lower():
            return f"no gRPC server answers at {server} ({error.message}); {start_hint}."
        if error.status in (503, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return f"the server at {server} is busy or unavailable ({error.message}). Retry later."
        if error.status == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"the server at {server} did not answer in time ({error.message})."
        return f"the server at {server} refused the request: {error.status}: {error.message}"
    if isinstance(error, ConnectionRefusedError):
        return f"no server answers at {server} (connection refused); {start_hint}."
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host of {server} ({error}); check --server."
    if isinstance(error, TimeoutError):
        return f"the server at {server} did not answer in time; check that it is a model server."
    if isinstance(error, ConnectionError):
        return f"the connection to {server} failed ({error}); {start_hint}."
    return None


def run(args: argparse.Namespace) -> int:
    from serving.client import ClientError

    try:
        return _predict(args)
    except (ClientError, OSError) as error:
        message = _server_failure(error, args.server, args.name) if args.server else None
        if message is None or getattr(args, "debug", False):
            raise
        print(f"selfy predict: error: {message}", file=sys.stderr)
        return 1


def _predict(args: argparse.Namespace) -> int:
    if args.stream:
        from selfy_cli._stream_predict import predict_stream

        return predict_stream(args)
    from serving.client import make_client
    from tfrecords.video import read_clip

    if args.server is not None and not args.server.startswith(("http://", "grpc://")):
        raise ValueError(
            f"`--server` must start with http:// or grpc://. Received: {args.server!r}."
        )
    target = args.server
    loaded = None
    if target is None:
        from selfy_tf.run_dir import load_model

        loaded = load_model(args.model, allow_saved_model=True)
        target = loaded.model_path if loaded.is_saved_model else None
    # Read here so that frame folders and .npy clips work as in `selfy viz`.
    frames = read_clip(args.video)
    if target is None:
        prediction = _keras_prediction(loaded, frames)
    else:
        client = make_client(target, model=args.name)
        try:
            prediction = client.predict_video(frames)
        finally:
            client.close()
    if args.json:
        print(
            json.dumps(
                {
                    "video": args.video,
                    "top_k": [
                        {"label": label, "score": score, "index": index}
                        for label, score, index in zip(
                            prediction.labels, prediction.scores, prediction.indices
                        )
                    ],
                }
            )
        )
    else:
        for rank, (label, score) in enumerate(prediction.top_k, start=1):
            print(f"{rank}\t{score:.4f}\t{label}")
    return 0


def _keras_prediction(loaded, frames):
    """Top classes of `frames` by a Keras model, through its evaluation view."""
    import numpy as np

    from serving.client import ClipPrediction

    clip = loaded.eval_view().views_numpy(frames)
    with loaded.stss_xla_scope():
        logits = np.asarray(loaded.model(clip.astype(np.float32), training=False), np.float64)[0]
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    indices = np.argsort(-scores, kind="stable")[: min(KERAS_TOP_K, scores.shape[0])]
    names = loaded.labels or [f"class {index}" for index in range(scores.shape[0])]
    return ClipPrediction(
        labels=[names[index] for index in indices],
        scores=[float(scores[index]) for index in indices],
        indices=[int(index) for index in indices],
    )
