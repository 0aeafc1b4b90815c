"""A user's own small video set, end to end with the README's commands: held-out top-1 and training time.

    python benchmarks/bench_own_videos.py                    # SELFY, TSM, TSN at full size
    python benchmarks/bench_own_videos.py --models selfy_tsm_r18 --clips-per-class 8

Writes user-like MP4 folders (`selfy_tf.datasets.user_videos`: 160x120 and
320x240, 16-24 frames, motion-only classes) with one seed for training and
another for a held-out set, then runs, as a user would:

    selfy tfrecords build --format folders --root videos --out data --validation-fraction 0.2
    selfy train --preset small_videos_cpu --data data --out runs/<model>
    selfy eval runs/<model> --data held_out --split validation

TSM and TSN are trained the same way, with `--set model.name=<arch>.motion`
(their own shipped pretrained weights). `--from-scratch` adds each model
trained from a random initialisation with the same recipe, to show what the
pretraining brings. Prints ONE JSON line: per model the held-out top-1, the
validation top-1 of best.keras and the training seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _common import write_results

MODELS = ("selfy_tsm_r18", "tsm_r18", "tsn_r18")


def _selfy(*arguments: str) -> str:
    """Runs the `selfy` command (this checkout's) and returns its stdout."""
    command = [sys.executable, "-m", "selfy_cli.main", *arguments]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def prepare_data(work: str, clips_per_class: int, train_seed: int, held_out_seed: int) -> tuple[str, str]:
    """The user's folder (with a validation split) and the held-out set, as TFRecords."""
    from selfy_tf.datasets import user_videos

    data, held_out = os.path.join(work, "data"), os.path.join(work, "held_out")
    user_videos.write_folder(os.path.join(work, "videos"), clips_per_class, seed=train_seed)
    user_videos.write_folder(os.path.join(work, "held_out_videos"), clips_per_class, seed=held_out_seed)
    _selfy(
        "tfrecords", "build", "--format", "folders", "--root", os.path.join(work, "videos"),
        "--out", data, "--validation-fraction", "0.2", "--no-progress",
    )
    _selfy(
        "tfrecords", "build", "--format", "folders", "--root", os.path.join(work, "held_out_videos"),
        "--out", held_out, "--split", "validation", "--no-progress",
    )
    return data, held_out


def train_and_score(work: str, data: str, held_out: str, arch: str, overrides: list[str], name: str) -> dict:
    run_dir = os.path.join(work, "runs", name)
    arguments = ["train", "--preset", "small_videos_cpu", "--data", data, "--out", run_dir, "--json"]
    for override in overrides:
        arguments += ["--set", override]
    started = time.perf_counter()
    result = json.loads(_selfy(*arguments).strip().splitlines()[-1])
    seconds = time.perf_counter() - started
    report = json.loads(_selfy("eval", run_dir, "--data", held_out, "--split", "validation").strip().splitlines()[-1])
    return {
        "model": arch,
        "held_out_top1": report["top1"],
        "best_val_top1": result["best_metric"]["value"],
        "train_seconds": round(seconds, 1),
        "steps": result["global_step"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--clips-per-class", type=int, default=16)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--held-out-seed", type=int, default=1)
    parser.add_argument("--from-scratch", action="store_true", help="also train each model from random weights")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--results-file")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="bench_own_videos-")
    data, held_out = prepare_data(work, args.clips_per_class, args.train_seed, args.held_out_seed)
    results = {
        "clips_per_class": args.clips_per_class,
        "train_seed": args.train_seed,
        "held_out_seed": args.held_out_seed,
        "cpu_count": os.cpu_count(),
    }
    for arch in args.models:
        overrides = [f"model.name={arch}.motion"]
        results[arch] = train_and_score(work, data, held_out, arch, overrides, arch)
        print(json.dumps(results[arch]), file=sys.stderr, flush=True)
        if args.from_scratch:
            with open(os.path.join(data, "labels.txt")) as labels:
                num_classes = len(labels.read().split())
            scratch_overrides = [*overrides, "model.init=", f"model.num_classes={num_classes}"]
            scratch = train_and_score(work, data, held_out, arch, scratch_overrides, f"{arch}_scratch")
            results[f"{arch}_from_scratch"] = scratch
            print(json.dumps(scratch), file=sys.stderr, flush=True)
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
