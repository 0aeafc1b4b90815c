"""`selfy serve`: a local server speaking TF Serving's REST and gRPC APIs.

    selfy serve exported --name selfy --rest-port 8501 --grpc-port 8500

Serves the newest version under `BASE/<name>/` on 127.0.0.1, picks up
versions exported later without a restart, and batches concurrent requests.
Each request is capped (clips, frames, frame size, bytes; see the flags).
For production, run `tensorflow_model_server` (or its container) on the
same folder: see docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging

from selfy_cli._help import HelpFormatter

logger = logging.getLogger(__name__)


def _version_labels(text: str | None) -> dict[str, int]:
    labels = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        label, _, version = item.partition("=")
        if not label.strip() or not version.strip().isdigit():
            raise ValueError(
                f"`--version-labels` must be LABEL=VERSION[,LABEL=VERSION...]. "
                f"Received: {text!r}. Try stable=1,canary=2."
            )
        labels[label.strip()] = int(version)
    return labels


def register_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve exported models over TF Serving's REST and gRPC APIs (127.0.0.1)",
        description="Serve BASE/<name>/<version> SavedModels on 127.0.0.1.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("base", metavar="BASE", help="export base directory")
    parser.add_argument("--name", default="selfy", help="model name (BASE/<name>)")
    parser.add_argument("--rest-port", type=int, default=8501, help="REST port (0: any free port)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument(
        "--no-batching", action="store_true", help="run each request on its own"
    )
    parser.add_argument("--max-batch-size", type=int, default=16, help="most clips per batch")
    parser.add_argument(
        "--batch-timeout-ms", type=float, default=2.0, help="longest wait for a batch to fill"
    )
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=64.0,
        help="largest request body (REST: 413 above it) or gRPC message accepted, in MiB",
    )
    parser.add_argument(
        "--max-batch-clips", type=int, default=64, help="most clips one request may hold"
    )
    parser.add_argument(
        "--max-clip-frames",
        type=int,
        default=1024,
        help="most frames per clip where the model takes clips of any length",
    )
    parser.add_argument(
        "--max-frame-size",
        type=int,
        default=4096,
        help="longest side in pixels of an encoded frame (read from its header)",
    )
    parser.add_argument(
        "--rest-threads", type=int, default=128, help="REST connections served at once (503 beyond)"
    )
    parser.add_argument(
        "--rest-timeout",
        type=float,
        default=30.0,
        help="seconds a REST client has to send its headers (idle keep-alive included), then its body",
    )
    parser.add_argument(
        "--rest-max-inflight-mb",
        type=float,
        default=256.0,
        help="REST request bodies held at once across connections, in MiB (503 beyond)",
    )
    parser.add_argument(
        "--rest-backend",
        choices=("aiohttp", "threads"),
        default="aiohttp",
        help="REST front end: aiohttp's event loop, or http.server threads (docs/serving.md)",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between checks for new versions"
    )
    parser.add_argument(
        "--load-timeout",
        type=float,
        default=300.0,
        help="seconds a version's load and warm-up may take before it is given up",
    )
    parser.add_argument("--num-versions", type=int, default=1, help="newest versions served")
    parser.add_argument(
        "--version-labels", default=None, help="LABEL=VERSION pairs, e.g. stable=1,canary=2"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # A taken port or a failing disk raises OSError: `selfy` prints one line.
    from serving.batching import BatchingOptions
    from serving.server import ModelServer, RequestLimits

    batching = None
    if not args.no_batching:
        batching = BatchingOptions(
            max_batch_size=args.max_batch_size, batch_timeout_s=args.batch_timeout_ms / 1000.0
        )
    server = ModelServer(
        args.base,
        name=args.name,
        rest_port=args.rest_port,
        grpc_port=args.grpc_port,
        batching=batching,
        poll_interval_s=args.poll_interval,
        num_versions=args.num_versions,
        version_labels=_version_labels(args.version_labels),
        limits=RequestLimits(
            max_batch_clips=args.max_batch_clips,
            max_clip_frames=args.max_clip_frames,
            max_frame_size=args.max_frame_size,
            max_request_bytes=int(args.max_request_mb * (1 << 20)),
        ),
        rest_threads=args.rest_threads,
        rest_timeout_s=args.rest_timeout,
        rest_max_inflight_bytes=int(args.rest_max_inflight_mb * (1 << 20)),
        rest_backend=args.rest_backend,
        load_timeout_s=args.load_timeout,
    )
    try:
        server.start()
        logger.info(
            "serving %s: REST %s, gRPC %s (Ctrl-C stops)", args.name, server.rest_url, server.grpc_target
        )
        server.wait()
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        server.stop()
    return 0
