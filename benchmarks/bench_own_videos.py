"""A user's own small video set, end to end with the README's commands: held-out top-1 and training time.

    python benchmarks/bench_own_videos.py                    # SELFY, TSM, TSN at full size
    python benchmarks/bench_own_videos.py --models selfy_tsm_r18 --held-out-seeds 1 2 3 --repeats 2
    python benchmarks/bench_own_videos.py --models selfy_tsm_r18 --clips-per-class 8

Writes user-like MP4 folders (`selfy_tf.datasets.user_videos`: 160x120 and
320x240, 16-24 frames, motion-only classes) with one seed for training and
another for each held-out set, then runs, as a user would:

    selfy tfrecords build --format folders --root videos --out data --validation-fraction 0.2
    selfy train --preset small_videos_cpu --data data --out runs/<model>
    selfy eval runs/<model> --data held_out --split validation

TSM and TSN are trained the same way, with `--set model.name=<arch>.motion`
(their own shipped pretrained weights). `--from-scratch` adds each model
trained from a random initialisation with the same recipe, to show what the
pretraining brings. `--repeats N` trains each model N times (runs can differ
by thread timing, though the latest figures' repeats were equal); a few
dozen clips make single runs vary by several points with `train.seed`.
Prints ONE JSON line: per model and run the top-1 on each held-out set, the
epoch `best.keras` holds, the last epoch's validation top-1 and the
training seconds, and per model the mean held-out top-1 over runs and sets.
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


def prepare_data(
    work: str, clips_per_class: int, train_seed: int, held_out_seeds: list[int]
) -> tuple[str, dict[int, str]]:
    """The user's folder (with a validation split) and each held-out set, as TFRecords."""
    from selfy_tf.datasets import user_videos

    data = os.path.join(work, "data")
    user_videos.write_folder(os.path.join(work, "videos"), clips_per_class, seed=train_seed)
    _selfy(
        "tfrecords", "build", "--format", "folders", "--root", os.path.join(work, "videos"),
        "--out", data, "--validation-fraction", "0.2", "--no-progress",
    )
    held_out = {}
    for seed in held_out_seeds:
        videos = os.path.join(work, f"held_out_videos_{seed}")
        held_out[seed] = os.path.join(work, f"held_out_{seed}")
        user_videos.write_folder(videos, clips_per_class, seed=seed)
        _selfy(
            "tfrecords", "build", "--format", "folders", "--root", videos,
            "--out", held_out[seed], "--split", "validation", "--no-progress",
        )
    return data, held_out


def train_and_score(
    work: str, data: str, held_out: dict[int, str], arch: str, overrides: list[str], name: str
) -> dict:
    run_dir = os.path.join(work, "runs", name)
    arguments = ["train", "--preset", "small_videos_cpu", "--data", data, "--out", run_dir, "--json"]
    for override in overrides:
        arguments += ["--set", override]
    started = time.perf_counter()
    result = json.loads(_selfy(*arguments).strip().splitlines()[-1])
    seconds = time.perf_counter() - started
    scores = {}
    for seed, held_out_data in held_out.items():
        report = _selfy("eval", run_dir, "--data", held_out_data, "--split", "validation", "--out",
                        os.path.join(run_dir, f"eval_held_out_{seed}"))
        scores[str(seed)] = json.loads(report.strip().splitlines()[-1])["top1"]
    return {
        "model": arch,
        "held_out_top1": scores,
        "best_epoch": result["best_metric"]["epoch"],
        "last_val_top1": (result["history"].get("val_top1") or [None])[-1],
        "train_seconds": round(seconds, 1),
        "steps": result["global_step"],
    }


def _mean_top1(runs: list[dict]) -> float:
    scores = [score for run in runs for score in run["held_out_top1"].values()]
    return round(sum(scores) / len(scores), 4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--clips-per-class", type=int, default=16)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--held-out-seeds", type=int, nargs="+", default=[1], help="one held-out set per seed")
    parser.add_argument("--repeats", type=int, default=1, help="trainings per model (default: 1)")
    parser.add_argument("--from-scratch", action="store_true", help="also train each model from random weights")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--results-file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1. Received: {args.repeats}.")
    work = args.work or tempfile.mkdtemp(prefix="bench_own_videos-")
    data, held_out = prepare_data(work, args.clips_per_class, args.train_seed, args.held_out_seeds)
    results = {
        "clips_per_class": args.clips_per_class,
        "train_seed": args.train_seed,
        "held_out_seeds": args.held_out_seeds,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
    }
    with open(os.path.join(data, "labels.txt")) as labels:
        num_classes = len(labels.read().split())
    for arch in args.models:
        overrides = [f"model.name={arch}.motion"]
        variants = [(arch, overrides)]
        if args.from_scratch:
            variants.append((f"{arch}_from_scratch", [*overrides, "model.init=", f"model.num_classes={num_classes}"]))
        for key, variant_overrides in variants:
            runs = []
            for repeat in range(args.repeats):
                runs.append(train_and_score(work, data, held_out, arch, variant_overrides, f"{key}_{repeat}"))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            results[key] = {"runs": runs, "mean_held_out_top1": _mean_top1(runs)}
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
