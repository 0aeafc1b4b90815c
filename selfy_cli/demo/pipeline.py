"""The `selfy demo` pipeline: data, training, evaluation, export, prediction, report.

Every step goes through the project's real components: the synthetic clips
are written by the TFRecord writer (or as MP4 videos converted by the
folders converter), the models come from the model zoo and are trained and
evaluated by `trainer`, the SELFY model is exported by `serving.export` and
queried through the exported SavedModel with `serving.client.LocalClient`.

Finished work is kept: the dataset is reused when its settings match, and a
finished training run is not redone (the trainer resumes or returns at once),
so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from typing import Any

import numpy as np

from selfy_cli.demo import early_recognition
from selfy_cli.demo.settings import DemoSettings
from selfy_tf.datasets import synthetic_motion
from selfy_tf.files import atomic_write_json
from tfrecords.synthetic import write_synthetic_motion

logger = logging.getLogger(__name__)

EXPORT_NAME = "selfy_demo"


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _progress_enabled(verbose: bool | str) -> bool:
    return sys.stderr.isatty() if verbose == "auto" else bool(verbose)


def _dataset_description(settings: DemoSettings) -> dict:
    return {
        "generator": "selfy_tf.datasets.synthetic_motion",
        "num_train": settings.num_train,
        "num_validation": settings.num_validation,
        "frame_size": settings.frame_size,
        "num_frames": settings.num_frames,
        "classes": list(settings.classes),
        "seed": settings.dataset_seed,
        "via": settings.via,
        "config": dataclasses.asdict(synthetic_motion.DEFAULT_CONFIG),
    }


def prepare_dataset(data_dir: str, settings: DemoSettings, progress: bool) -> dict:
    """Writes the synthetic dataset, or reuses it when its description matches."""
    description = _dataset_description(settings)
    marker = os.path.join(data_dir, "synthetic_motion.json")
    if _read_json(marker) == description:
        logger.info("Reusing the synthetic dataset in %s", data_dir)
        return description
    if os.path.isdir(data_dir):
        shutil.rmtree(data_dir)
    started = time.perf_counter()
    write_synthetic_motion(
        data_dir,
        num_train=settings.num_train,
        num_validation=settings.num_validation,
        seed=settings.dataset_seed,
        num_frames=settings.num_frames,
        size=settings.frame_size,
        classes=settings.classes,
        via=settings.via,
        progress=progress,
    )
    atomic_write_json(marker, description)
    logger.info(
        "Wrote %d + %d synthetic clips in %.1f s",
        settings.num_train, settings.num_validation, time.perf_counter() - started,
    )
    return description


def validation_clips(settings: DemoSettings, indices: list[int]) -> list[tuple[np.ndarray, int, str]]:
    """Regenerates the validation clips at `indices` (the generator is deterministic)."""
    wanted = set(indices)
    clips = {}
    # The same split size as the dataset: the label order depends on it.
    for position, item in enumerate(
        synthetic_motion.iter_split(
            settings.num_validation,
            settings.dataset_seed,
            "validation",
            settings.num_frames,
            settings.frame_size,
            settings.classes,
        )
    ):
        if position in wanted:
            clips[position] = item
        if len(clips) == len(wanted):
            break
    return [clips[index] for index in indices]


def _pick_visualized_clips(settings: DemoSettings) -> list[int]:
    """Validation clip indices of distinct classes, favouring translation and rotation."""
    labels = synthetic_motion.split_labels(
        settings.num_validation, settings.dataset_seed, "validation", len(settings.classes)
    )
    preferred = ["move_right", "rotate_clockwise", "move_up", "grow", "move_then_stop"]
    order = [name for name in preferred if name in settings.classes] + [
        name for name in settings.classes if name not in preferred
    ]
    picked = []
    for name in order:
        matches = np.flatnonzero(labels == settings.classes.index(name))
        if len(matches):
            picked.append(int(matches[0]))
        if len(picked) == settings.num_visualized_clips:
            break
    return picked


def training_overrides(settings: DemoSettings, model_name: str, seed: int, causal: bool = False) -> list[str]:
    """The `--set` overrides of one demo run, on top of the `tiny_cpu` preset.

    `causal`: the causal model, trained on consecutive frames (a stream's).
    """
    selfy = model_name.startswith("selfy")
    no_flip = list(synthetic_motion.no_flip_classes(settings.classes))
    overrides = [
        f"model.name={model_name}",
        f"model.num_classes={len(settings.classes)}",
        f"model.num_frames={settings.num_frames}",
        f"model.input_size={settings.frame_size}",
        f"model.dropout={settings.dropout}",
        f"model.width_multiplier={settings.width_multiplier}",
        f"model.selfy_channels={settings.selfy_channels if selfy else 'none'}",
        f"model.selfy_stage={settings.selfy_stage}",
        f"data.batch_size={settings.batch_size}",
        # Flipping would turn left into right and clockwise into
        # counter-clockwise without changing the label.
        f"data.no_flip_classes={no_flip}",
        # Frames are stored at the model's input size: the evaluation view
        # keeps them whole (no resize, the crop is the frame).
        f"data.eval_size=[{settings.frame_size}, {settings.frame_size}]",
        f"optimizer.lr={settings.learning_rate}",
        f"optimizer.weight_decay={settings.weight_decay}",
        "schedule.name=cosine",
        "schedule.decay_epochs=[]",
        f"schedule.warmup_epochs={settings.warmup_epochs}",
        f"train.epochs={settings.epochs}",
        f"train.seed={seed}",
        "train.backup_every_steps=1000000",
        "runtime.strategy=none",
        "runtime.jit_compile=false",
    ]
    return overrides + (early_recognition.CAUSAL_OVERRIDES if causal else [])


def train_and_evaluate(
    settings: DemoSettings,
    model_name: str,
    seed: int,
    data_dir: str,
    run_dir: str,
    verbose: bool | str,
    causal: bool = False,
) -> dict:
    """Trains one model with the real trainer and evaluates its final checkpoint.

    `causal`: train the causal model (named `early_recognition.causal_run_name`).
    """
    import trainer

    config = trainer.apply_overrides(
        trainer.get_preset("tiny_cpu"), training_overrides(settings, model_name, seed, causal)
    )
    summary_path = os.path.join(run_dir, "demo_run.json")
    previous = _read_json(summary_path)
    started = time.perf_counter()
    keras_verbose: int | str = "auto" if verbose == "auto" else (1 if verbose else 2)
    result = trainer.train(config, data_dir, run_dir, verbose=keras_verbose)
    train_seconds = time.perf_counter() - started
    if previous is not None and previous.get("epochs_completed") == result.epochs_completed:
        # A finished run was found and not redone: keep its own training time.
        train_seconds = previous["train_seconds"]
    # The final model, not the checkpoint that scored best on this same
    # validation split: picking the best of several epochs would flatter a
    # model at chance.
    from selfy_tf.run_dir import RunPaths

    report = trainer.evaluate(
        RunPaths(run_dir).last_checkpoint,
        data_dir,
        output_dir=run_dir,
        batch_size=settings.batch_size,
        verbose=_progress_enabled(verbose),
    )
    summary = {
        "model": early_recognition.causal_run_name(model_name) if causal else model_name,
        "seed": seed,
        "run_dir": run_dir,
        "top1": float(report["top1"]),
        "best_epoch_val_top1": float(max(result.history.get("val_top1", [float("nan")]))),
        "mean_class_accuracy": float(report["mean_class_accuracy"]),
        "confusion_matrix": np.asarray(report["confusion_matrix"]).tolist(),
        "per_class": report.get("per_class"),
        "history": {key: [float(value) for value in values] for key, values in result.history.items()},
        "epochs_completed": int(result.epochs_completed),
        "train_seconds": float(train_seconds),
    }
    atomic_write_json(summary_path, summary)
    return summary


def _count_params(run_dir: str) -> int:
    from selfy_tf.run_dir import RunPaths, load_model

    return int(load_model(RunPaths(run_dir).last_checkpoint).model.count_params())


def summarize_runs(runs: list[dict], settings: DemoSettings) -> dict:
    """Per-model accuracy over seeds: values, mean and (population) std."""
    models = {}
    for model_name in [*settings.models, *early_recognition.causal_run_names(settings)]:
        model_runs = [run for run in runs if run["model"] == model_name]
        if not model_runs:
            continue
        top1 = np.array([run["top1"] for run in model_runs])
        class_accuracy = np.array([run["mean_class_accuracy"] for run in model_runs])
        models[model_name] = {
            "seeds": [run["seed"] for run in model_runs],
            "top1": top1.tolist(),
            "top1_mean": float(top1.mean()),
            "top1_std": float(top1.std()),
            "mean_class_accuracy": class_accuracy.tolist(),
            # For reference only: the best epoch was picked on the same split.
            "best_epoch_val_top1": [run.get("best_epoch_val_top1") for run in model_runs],
            "train_seconds": [run["train_seconds"] for run in model_runs],
            "confusion_matrix": np.sum(
                [np.asarray(run["confusion_matrix"]) for run in model_runs], axis=0
            ).tolist(),
            "run_dirs": [run["run_dir"] for run in model_runs],
        }
    return models


def check_claims(models: dict, chance: float) -> dict:
    """Whether the measured means show SELFY >= TSM > TSN and TSN near chance.

    "Near chance" means within 2 standard errors of chance given the
    number of validation clips, or below chance + 10 points.
    """

    def mean(name: str) -> float | None:
        return models[name]["top1_mean"] if name in models else None

    selfy, tsm, tsn = mean("selfy_tsm_r18"), mean("tsm_r18"), mean("tsn_r18")
    claims: dict[str, bool | None] = {
        "selfy_ge_tsm": None if selfy is None or tsm is None else selfy >= tsm,
        "tsm_gt_tsn": None if tsm is None or tsn is None else tsm > tsn,
        "tsn_near_chance": None if tsn is None else tsn <= chance + 0.10,
    }
    return claims


def export_and_predict(
    run_dir: str, export_base: str, video_path: str
) -> dict:
    """Exports a run's final model for TF Serving and classifies one video through it."""
    from selfy_tf.run_dir import RunPaths, load_model
    from serving.client import LocalClient
    from serving.export import export_saved_model

    loaded = load_model(RunPaths(run_dir).last_checkpoint, require_labels=True)
    view = loaded.eval_view()
    model_dir = os.path.join(export_base, EXPORT_NAME)
    if os.path.isdir(model_dir):
        # The demo's own earlier export: replace it.
        shutil.rmtree(model_dir)
    started = time.perf_counter()
    exported = export_saved_model(
        loaded.model,
        export_base,
        name=EXPORT_NAME,
        labels=loaded.labels,
        version=1,
        view_settings=view.resize_settings(),
        write_configs=False,
    )
    export_seconds = time.perf_counter() - started
    client = LocalClient(exported.path)
    started = time.perf_counter()
    prediction = client.predict_video(video_path)
    return {
        "export_path": exported.path,
        "export_seconds": export_seconds,
        "video": video_path,
        "top_k": [
            {"label": label, "probability": float(score)}
            for label, score in zip(prediction.labels, prediction.scores)
        ],
        "predict_seconds": time.perf_counter() - started,
    }


def run_demo(out_dir: str, settings: DemoSettings, verbose: bool | str = "auto") -> dict:
    """Runs the whole demo and writes `out_dir/report.html` and `results.json`.

    Args:
        out_dir: output folder (created; an earlier demo there is resumed).
        settings: what to run (`full_settings()` or `quick_settings()`).
        verbose: progress bars (True / False / "auto": when stderr is a
            terminal; otherwise one line per epoch).

    Returns:
        The `results.json` content.
    """
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from selfy_cli.demo import report as report_lib

    started = time.perf_counter()
    progress = _progress_enabled(verbose)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    data_dir = os.path.join(out_dir, "data")
    figures_dir = os.path.join(out_dir, "figures")
    os.makedirs(figures_dir, exist_ok=True)

    dataset = prepare_dataset(data_dir, settings, progress)

    # One sample video per visualised clip, for the exported model and `selfy viz`.
    visualized = _pick_visualized_clips(settings)
    samples = []
    for index, (frames, label, media_id) in zip(visualized, validation_clips(settings, visualized)):
        name = settings.classes[label]
        video_path = synthetic_motion.write_video(
            os.path.join(out_dir, "samples", f"{name}.mp4"), frames
        )
        samples.append({"index": index, "label": name, "media_id": media_id, "video": video_path, "frames": frames})

    runs = []
    total = len(settings.seeds) * len(settings.models) + len(early_recognition.causal_run_names(settings))
    with tqdm(total=total, desc="demo runs", unit="run", disable=not progress, file=sys.stderr) as bar:
        for seed in settings.seeds:
            for model_name in settings.models:
                bar.set_postfix_str(f"{model_name} seed {seed}")
                run_dir = os.path.join(out_dir, "runs", f"{model_name}-seed{seed}")
                runs.append(train_and_evaluate(settings, model_name, seed, data_dir, run_dir, verbose))
                logger.info(
                    "%s seed %d: validation top-1 %.1f%% (%.0f s)",
                    model_name, seed, 100 * runs[-1]["top1"], runs[-1]["train_seconds"],
                )
                bar.update(1)
        # The causal model with the first seed only: it is there for the
        # early recognition curve, and keeps the demo's time nearly the same.
        if settings.causal_model is not None:
            seed, run_name = settings.seeds[0], early_recognition.causal_run_name(settings.causal_model)
            bar.set_postfix_str(f"{run_name} seed {seed}")
            run_dir = os.path.join(out_dir, "runs", f"{run_name}-seed{seed}")
            runs.append(
                train_and_evaluate(settings, settings.causal_model, seed, data_dir, run_dir, verbose, causal=True)
            )
            logger.info(
                "%s seed %d: validation top-1 %.1f%% (%.0f s)",
                run_name, seed, 100 * runs[-1]["top1"], runs[-1]["train_seconds"],
            )
            bar.update(1)

    models = summarize_runs(runs, settings)
    for entry in models.values():
        entry["params"] = _count_params(entry["run_dirs"][0])
    chance = 1.0 / len(settings.classes)

    selfy_name = next((name for name in settings.models if name.startswith("selfy")), settings.models[-1])
    selfy_run = models[selfy_name]["run_dirs"][0]
    prediction = export_and_predict(
        selfy_run, os.path.join(out_dir, "export"), samples[0]["video"]
    )
    prediction["true_label"] = samples[0]["label"]
    logger.info(
        "Exported %s to %s; it predicts %r for a %r clip.",
        selfy_name, prediction["export_path"], prediction["top_k"][0]["label"], samples[0]["label"],
    )

    results = {
        "settings": dataclasses.asdict(settings),
        "dataset": dataset,
        "chance": chance,
        "models": models,
        "claims": check_claims(models, chance),
        "early_recognition": early_recognition.measure(models, data_dir, settings),
        "prediction": prediction,
        "environment": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "cpu_count": os.cpu_count(),
        },
    }
    results["figures"] = report_lib.write_figures(out_dir, figures_dir, results, samples, settings, progress)
    results["elapsed_seconds"] = time.perf_counter() - started
    atomic_write_json(os.path.join(out_dir, "results.json"), results)
    report_lib.write_report(os.path.join(out_dir, "report.html"), results, settings)
    return results
