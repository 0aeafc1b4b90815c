"""`selfy tfrecords`: convert video datasets to TFRecord clips, and inspect them.

    selfy tfrecords build --format folders --root videos/ --out data/ --validation-fraction 0.2
    selfy tfrecords build --format ssv1 --list train_videofolder.txt \\
        --frames-root 20bn-something-something-v1 --labels category.txt \\
        --out data/ --split train --shards 64
    selfy tfrecords inspect data/ --check

`build` writes `OUT/<split>-0000k-of-000NN.tfrecord`, `OUT/labels.txt` and
`OUT/<split>.manifest.json`; re-running the same command after an
interruption finishes only the missing shards. It prints a JSON summary line
per split on stdout and exits 1 when a split has no clip converted.

`--format folders` converts `root/<class>/<video>` as one split, or as
`train` and `validation` with `--validation-fraction F`; a root with
`train/<class>/...` and `validation/<class>/...` gives both splits at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from selfy_cli._help import HelpFormatter

logger = logging.getLogger(__name__)

# Frame size of the official Something-Something preprocessing.
_SOMETHING_SOMETHING_SIZE = (240, 320)


def register_subparser(subparsers) -> None:
    from tfrecords import sources

    parser = subparsers.add_parser(
        "tfrecords",
        help="convert video datasets to TFRecord clips; inspect them",
        description="Convert video datasets to TFRecord clips and inspect them.",
    )
    commands = parser.add_subparsers(dest="tfrecords_command", metavar="ACTION", required=True)
    formatter = HelpFormatter

    build = commands.add_parser(
        "build", help="convert a dataset split", formatter_class=formatter,
        description="Convert one split of a dataset to sharded TFRecord clips (resumable).",
    )
    build.add_argument("--format", required=True, choices=sorted(sources.FORMATS),
                       help="source format")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--split", default=None,
                       help="split name (the trainer reads 'train' and 'validation'); default: "
                            "'train', or for folders every split the root holds")
    build.add_argument("--validation-fraction", type=float, default=None, metavar="F",
                       help="folders: put this fraction of each class of a flat root/<class>/ tree "
                            "in the validation split (deterministic per file)")
    build.add_argument("--shards", type=int, default=1, help="number of shard files")
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="parallel worker processes (1: convert in-process)")
    build.add_argument("--size", default=None,
                       help="resize frames to HEIGHTxWIDTH, or 'native' to keep them "
                            "(default: 240x320 for ssv1/ssv2, native otherwise)")
    build.add_argument("--resize-short", type=int, default=None,
                       help="resize the short side to N, keeping the aspect ratio")
    build.add_argument("--fps", type=float, default=None,
                       help="keep video frames at this rate (default: every frame)")
    build.add_argument("--max-frames", type=int, default=None,
                       help="keep at most this many frames per clip")
    build.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of stored frames")
    build.add_argument("--labels", default=None,
                       help="class list: one name per line (ssv1, kinetics) or the labels "
                            "JSON (ssv2); default: OUT/labels.txt if it exists")
    build.add_argument("--list", default=None,
                       help="ssv1: list file, 'folder num_frames label_index' or "
                            "'folder;label text' lines")
    build.add_argument("--frames-root", default=None, help="ssv1: directory of frame folders")
    build.add_argument("--frame-template", default=sources.DEFAULT_FRAME_TEMPLATE,
                       help="ssv1: frame file name template (the TSM lists use img_{:05d}.jpg)")
    build.add_argument("--frame-start", type=int, default=1,
                       help="ssv1: index of the first frame file")
    build.add_argument("--annotations", default=None,
                       help="ssv2: split JSON (something-something-v2-train.json, ...)")
    build.add_argument("--videos-root", default=None, help="ssv2, kinetics: video directory")
    build.add_argument("--csv", default=None,
                       help="kinetics: CSV label,youtube_id,time_start,time_end,split")
    build.add_argument("--video-template", default=sources.DEFAULT_KINETICS_TEMPLATE,
                       help="kinetics: video file name (no extension) from the CSV columns")
    build.add_argument("--root", default=None, help="folders: root/<class>/<video>")
    build.add_argument("--overwrite", action="store_true",
                       help="replace this split's existing shards instead of resuming")
    build.add_argument("--no-progress", action="store_true",
                       help="no progress bar (one log line per shard instead)")
    build.set_defaults(handler=run_build)

    inspect = commands.add_parser(
        "inspect", help="summarise (and check) a converted dataset", formatter_class=formatter,
        description="Print counts, classes and frame statistics, and decode a sample.",
    )
    inspect.add_argument("data_dir", metavar="DIR", help="dataset directory")
    inspect.add_argument("--check", action="store_true",
                         help="parse every record and decode every frame; exit 1 on any error")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(handler=run_inspect)


def _frame_size(args: argparse.Namespace) -> tuple[int, int] | None:
    from tfrecords import video

    if args.size is not None and args.resize_short is not None and args.size != "native":
        raise ValueError(
            f"pass --size or --resize-short, not both. Received: --size {args.size} "
            f"--resize-short {args.resize_short}."
        )
    if args.size == "native" or args.resize_short is not None:
        return None
    if args.size is None:
        return _SOMETHING_SOMETHING_SIZE if args.format in ("ssv1", "ssv2") else None
    return video.parse_size(args.size)


def _listings(args: argparse.Namespace) -> dict:
    """`{split: Listing}` of the splits to convert."""
    from selfy_tf.run_dir import read_labels
    from tfrecords import sources
    from tfrecords.split import labels_path

    known = read_labels(args.out) if os.path.exists(labels_path(args.out)) else None
    if args.format != "folders" and args.validation_fraction is not None:
        raise ValueError(
            f"`--validation-fraction` splits a `--format folders` tree; {args.format} datasets come "
            "with their own validation list. Convert it with `--split validation`."
        )
    split = args.split or "train"
    if args.format == "ssv1":
        return {split: sources.list_ssv1(args.list, args.frames_root, args.labels, known)}
    if args.format == "ssv2":
        return {split: sources.list_ssv2(args.annotations, args.videos_root, args.labels, known)}
    if args.format == "kinetics":
        return {split: sources.list_kinetics(args.csv, args.videos_root, args.labels, known, args.video_template)}
    if args.labels:
        logger.warning("folders: --labels is ignored; classes are the subfolder names")
    listings = sources.list_folder_splits(args.root, known, args.validation_fraction, split)
    if args.split is not None and len(listings) > 1:
        if args.split not in listings:
            raise ValueError(
                f"`--split` {args.split!r} is not among the splits of {args.root}: {sorted(listings)}."
            )
        listings = {args.split: listings[args.split]}
    if args.split is None and "validation" not in listings:
        logger.warning(
            "no validation split: training will report no validation accuracy. Add "
            "`--validation-fraction 0.2`, or put the videos in %s and %s.",
            os.path.join(args.root, "train", "<class>", ""), os.path.join(args.root, "validation", "<class>", ""),
        )
    return listings


def run_build(args: argparse.Namespace) -> int:
    from tfrecords import sources

    for flag, value in (("--shards", args.shards), ("--workers", args.workers)):
        if value < 1:
            raise ValueError(f"`{flag}` must be at least 1. Received: {value}.")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"`--max-frames` must be at least 1. Received: {args.max_frames}.")
    try:
        args.frame_template.format(1)
    except (IndexError, KeyError, ValueError):
        raise ValueError(
            f"`--frame-template` must format one integer, e.g. img_{{:05d}}.jpg. "
            f"Received: {args.frame_template!r}."
        ) from None
    options = sources.LoadOptions(
        size=_frame_size(args),
        resize_short=args.resize_short,
        fps=args.fps,
        max_frames=args.max_frames,
        frame_template=args.frame_template,
        frame_start=args.frame_start,
    )
    status = 0
    for split, listing in _listings(args).items():
        if _build_split(args, split, listing, options):
            status = 1
    return status


def _build_split(args: argparse.Namespace, split: str, listing, options) -> int:
    from tfrecords import writer

    logger.info(
        "%s: %d clips listed, %d classes, %d shards, %d workers",
        split, len(listing.clips), len(listing.labels), args.shards, args.workers,
    )
    manifest = writer.convert_split(
        args.out,
        split,
        listing,
        options=options,
        num_shards=args.shards,
        workers=args.workers,
        jpeg_quality=args.jpeg_quality,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
        extra_manifest={"format": args.format},
    )
    for failure in manifest["failures"][:10]:
        logger.warning("failed: %s: %s", failure["source"], failure["reason"])
    if manifest["failed"] > 10:
        logger.warning("... %d more failures in the manifest", manifest["failed"] - 10)
    print(json.dumps({
        "out": args.out,
        "split": split,
        "listed": manifest["listed"],
        "converted": manifest["converted"],
        "failed": manifest["failed"],
        "num_shards": manifest["num_shards"],
    }))
    if manifest["converted"] == 0:
        logger.error("no clip of %d could be converted: see %s.manifest.json",
                     manifest["listed"], os.path.join(args.out, split))
        return 1
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from tfrecords import inspect

    summary = inspect.inspect_dataset(args.data_dir, check=args.check)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0 if summary.get("ok", True) else 1


def _size_range(statistics: dict) -> str:
    """`128` for a fixed side, `128-240` for sides that vary."""
    low, high = statistics["min"], statistics["max"]
    return str(low) if low == high else f"{low}-{high}"


def _print_summary(summary: dict) -> None:
    labels = summary["labels"]
    shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
    print(f"{summary['data_dir']}: {summary['num_classes']} classes ({shown})")
    for split, info in summary["splits"].items():
        counts = ", ".join(
            f"{key} {info[key]}" for key in ("listed", "converted", "failed", "records") if key in info
        )
        print(f"  {split}: {info['files']} files; {counts}")
        if "frames" in info:
            frames = info["frames"]
            print(f"    frames per clip: min {frames['min']}, mean {frames['mean']}, max {frames['max']}")
        if "height" in info:
            print(f"    frame size: {_size_range(info['height'])}x{_size_range(info['width'])}")
        sample = info["sample"]
        if not sample.get("empty"):
            print(f"    sample {sample['file']}: {sample['media_id']!r} label {sample['label']} "
                  f"({sample['label_text']}), {sample['num_frames']} frames of {tuple(sample['frame_shape'])}")
        if "warning" in info:
            print(f"    warning: {info['warning']}")
    if "ok" in summary:
        print("check: ok" if summary["ok"] else f"check: {summary['num_errors']} errors")
        for error in summary["errors"]:
            print(f"    {error}")
