"""`selfy viz`: what a model sees in a clip (STSS maps, motion field, Grad-CAM).

    selfy viz demo_out/samples/move_left.mp4 --model demo_out/runs/selfy_tsm_r18-seed0 --out viz_out

Writes `stss_query.png`, `motion_field.png`/`.gif`, `gradcam.png`/`.gif` and
`prediction.json` to `--out`, and prints the top classes.
"""

from __future__ import annotations

import argparse
import logging

from selfy_cli._help import HelpFormatter
from selfy_cli._options import add_labels_argument, add_model_argument

logger = logging.getLogger(__name__)


def _query(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(
            f"expected FRAME,ROW,COLUMN (three integers), got {text!r}"
        )
    return values


def register_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "viz",
        help="visualise STSS maps, the soft-argmax motion field and Grad-CAM of a clip",
        description=(
            "Runs a model on a clip and writes the STSS similarity maps of a query "
            "point per temporal offset, the motion field read from the STSS by "
            "soft-argmax (arrows over the frames) and Grad-CAM of the predicted "
            "class (PNG and GIF)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "video", metavar="VIDEO",
        help="video file, folder of frame images, or .npy array [frames, height, width, 3]",
    )
    add_model_argument(parser, option=True, keras_only=True)
    parser.add_argument("--out", default="viz_out", help="output folder")
    parser.add_argument(
        "--query", type=_query, default=None,
        help="query point FRAME,ROW,COLUMN in STSS cells (default: the middle "
        "frame's cell where a moved match most beats standing still)",
    )
    add_labels_argument(parser)
    parser.add_argument(
        "--temperature", type=float, default=0.05, help="soft-argmax temperature"
    )
    parser.add_argument("--top-k", type=int, default=3, help="classes to print")
    parser.add_argument("--no-gif", action="store_true", help="write PNGs only")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfy_tf.run_dir import load_model
    from selfy_tf.viz import explain
    from tfrecords.video import read_clip

    loaded = load_model(
        args.model, args.labels, keras_needed_for="selfy viz reads the Keras layers (STSS maps, Grad-CAM)"
    )
    # The model's evaluation view picks, resizes and crops the frames, as `selfy eval` does.
    frames = loaded.eval_view().views_numpy(read_clip(args.video))[0]
    with loaded.stss_xla_scope():
        result = explain.visualize_clip(
            loaded.model,
            frames,
            args.out,
            loaded.labels,
            query=args.query,
            temperature=args.temperature,
            top_k=args.top_k,
            gif=not args.no_gif,
        )
    for entry in result["top_k"]:
        print(f"{entry['probability']:7.2%}  {entry['label']}")
    logger.info("Wrote %s", ", ".join(sorted(result["files"].values())))
    return 0
