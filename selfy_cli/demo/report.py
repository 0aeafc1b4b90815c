"""Figures, `report.html` and the terminal summary of `selfy demo`."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from selfy_cli.demo import early_recognition
from selfy_cli.demo.settings import DemoSettings
from selfy_tf.viz import motion_field as motion_field_lib
from selfy_tf.viz import plots
from selfy_tf.viz.report import HTMLReport

logger = logging.getLogger(__name__)

# Overlapping 4x4 patches every 2 pixels: a cell per 2 pixels keeps the
# per-frame motion of the demo's 32x32 clips at about one cell.
PIXEL_PATCH_SIZE = 4
PIXEL_STRIDE = 2


def _percent(value: float) -> str:
    return f"{100.0 * value:.1f}"


def accuracy_cell(entry: dict) -> str:
    """`"mean ± std"` in percent (just the value for a single seed)."""
    if len(entry["top1"]) == 1:
        return f"{_percent(entry['top1_mean'])}"
    return f"{_percent(entry['top1_mean'])} ± {_percent(entry['top1_std'])}"


def summary_rows(results: dict) -> list[list[str]]:
    """Rows of the accuracy table: model, params, top-1, per seed, time per run."""
    rows = []
    for name, entry in results["models"].items():
        rows.append(
            [
                name,
                f"{entry['params']:,}",
                accuracy_cell(entry),
                ", ".join(_percent(value) for value in entry["top1"]),
                f"{np.mean(entry['train_seconds']):.0f} s",
            ]
        )
    return rows


SUMMARY_HEADERS = ["model", "params", "top-1 % (mean ± std)", "per seed", "train time / run"]


def format_summary_table(results: dict) -> str:
    """A plain-text table for the terminal."""
    rows = [SUMMARY_HEADERS] + summary_rows(results)
    widths = [max(len(row[column]) for row in rows) for column in range(len(SUMMARY_HEADERS))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append(
        f"chance: {_percent(results['chance'])} %   "
        f"seeds: {len(results['settings']['seeds'])}   "
        f"validation clips: {results['settings']['num_validation']}"
    )
    if results["settings"].get("quick"):
        lines.append(_QUICK_NOTE)
    return "\n".join(lines)


_QUICK_NOTE = (
    "quick run: a path check (every step runs, the report is written); its accuracies "
    "compare nothing. Run `selfy demo` without --quick to compare the models."
)


def _claims_text(results: dict) -> str:
    claims = results["claims"]
    models = results["models"]
    chance = results["chance"]

    def mean(name: str) -> str:
        return f"{_percent(models[name]['top1_mean'])} %" if name in models else "n/a"

    parts = [
        "Accuracies are those of each run's final model (last epoch) on all "
        f"{results['settings']['num_validation']} validation clips. "
        f"Measured validation top-1 (mean over {len(results['settings']['seeds'])} seed(s)): "
        f"TSN {mean('tsn_r18')}, TSM {mean('tsm_r18')}, SELFY {mean('selfy_tsm_r18')}; "
        f"chance is {_percent(chance)} %."
    ]
    if results["settings"].get("quick"):
        settings = results["settings"]
        parts.append(
            f"This was the quick path check ({settings['num_train']} training clips, "
            f"{settings['epochs']} epoch, one seed): it shows that data conversion, training, "
            "evaluation, export and serving run end to end, not which model is better. "
            "Run `selfy demo` without --quick to test the claims."
        )
        return " ".join(parts)
    statements = {
        "selfy_ge_tsm": ("SELFY ≥ TSM", "holds", "does not hold"),
        "tsm_gt_tsn": ("TSM > TSN", "holds", "does not hold"),
        "tsn_near_chance": ("TSN within 10 points of chance", "holds", "does not hold"),
    }
    for key, (label, yes, no) in statements.items():
        value = claims.get(key)
        if value is not None:
            parts.append(f"{label}: {yes if value else no} in this run.")
    if len(results["settings"]["seeds"]) == 1:
        parts.append("With one seed these numbers carry no error bar.")
    return " ".join(parts)


def write_figures(
    out_dir: str,
    figures_dir: str,
    results: dict,
    samples: list[dict],
    settings: DemoSettings,
    progress: bool,
) -> dict[str, Any]:
    """Writes every PNG/GIF of the report; returns their paths by name."""
    from tqdm import tqdm

    from selfy_tf.viz import explain

    figures: dict[str, Any] = {}
    models = results["models"]
    figures["accuracy"] = plots.plot_accuracy(
        {name: entry["top1"] for name, entry in models.items()},
        os.path.join(figures_dir, "accuracy.png"),
        chance=results["chance"],
    )
    # Training curves of the first seed of each model.
    histories = {}
    for name, entry in models.items():
        run_summary = os.path.join(entry["run_dirs"][0], "demo_run.json")
        with open(run_summary, encoding="utf-8") as handle:
            histories[name] = json.load(handle)["history"]
    figures["training_curves"] = plots.plot_training_curves(
        histories,
        os.path.join(figures_dir, "training_curves.png"),
        metrics=("loss", "val_loss", "top1", "val_top1"),
    )
    figures["confusion"] = {}
    for name, entry in models.items():
        figures["confusion"][name] = plots.plot_confusion_matrix(
            np.asarray(entry["confusion_matrix"]),
            list(settings.classes),
            os.path.join(figures_dir, f"confusion_{name}.png"),
            title=f"{name} (validation, all seeds)",
        )

    if results.get("early_recognition"):
        figures["early_recognition"] = _plot_early_recognition(results, figures_dir)

    selfy_name = next((name for name in models if name.startswith("selfy")), None)
    figures["clips"] = []
    if selfy_name is None:
        return figures
    from selfy_tf.run_dir import RunPaths, load_model

    loaded = load_model(RunPaths(models[selfy_name]["run_dirs"][0]).last_checkpoint)
    model, labels = loaded.model, loaded.labels
    for position, sample in enumerate(
        tqdm(samples, desc="visualising", unit="clip", disable=not progress, leave=False)
    ):
        prefix = f"clip{position}_{sample['label']}_"
        clip_dir = os.path.join(figures_dir, "clips")
        frames = sample["frames"]
        entry = {"label": sample["label"], "media_id": sample["media_id"], "video": sample["video"]}
        entry["frames"] = plots.plot_clip(
            frames, os.path.join(clip_dir, f"{prefix}frames.png"), title=f"true class: {sample['label']}"
        )
        # The kernel soft-argmax ignores the many weak matches of plain
        # background; arrows are drawn only where moving matches clearly
        # better than standing still.
        pixel_field = motion_field_lib.compute_motion_field(
            motion_field_lib.patch_features(frames, PIXEL_PATCH_SIZE, PIXEL_STRIDE),
            window=(5, 9, 9),
            kernel_sigma=1.0,
        )
        entry["pixel_motion_field"] = plots.plot_motion_field(
            frames,
            pixel_field,
            os.path.join(clip_dir, f"{prefix}pixel_motion_field.png"),
            stride=PIXEL_STRIDE,
            min_confidence=0.5,
            min_gain=0.15,
            title=(
                f"motion in the pixels: kernel soft-argmax of the STSS of "
                f"{PIXEL_PATCH_SIZE}x{PIXEL_PATCH_SIZE} patches"
            ),
        )
        entry["model"] = explain.visualize_clip(
            model, frames, clip_dir, labels, prefix=prefix, gif=position == 0
        )
        figures["clips"].append(entry)
    return figures


def _plot_early_recognition(results: dict, figures_dir: str) -> str:
    early = results["early_recognition"]
    return plots.plot_top1_by_frames_seen(
        {name: curve["top1"] for name, curve in early["models"].items()},
        os.path.join(figures_dir, "early_recognition.png"),
        streams=[name for name, curve in early["models"].items() if curve["kind"] == "stream"],
        chance=results["chance"],
    )


def _add_early_recognition(report: HTMLReport, results: dict, base_dir: str) -> None:
    """The section on top-1 against frames seen (`selfy_cli.demo.early_recognition`)."""
    early = results.get("early_recognition")
    if not early:
        return
    report.add_heading("Early recognition: top-1 against frames seen")
    text = (
        f"Validation top-1 after the first k of {len(early['frames_seen'])} frames "
        f"(seed {early['seed']} of each model). Offline models get the first k frames with the "
        "missing ones filled by repeating frame k (the last one seen) and score them as a clip; "
        "the causal model runs as a stream, one frame at a time, and answers with the mean of "
        "its step logits so far."
    )
    for name, curve in early["models"].items():
        if curve["kind"] == "stream":
            text += (
                f" {name} is {name.removesuffix(early_recognition.CAUSAL_SUFFIX)} made causal "
                "(each frame sees only itself and earlier frames) and trained on consecutive frames, "
                "as a stream delivers them, with the first seed only."
                f" After all frames the stream of {name} scores {_percent(curve['top1'][-1])} % and "
                f"the same model on whole clips {_percent(curve['clip_top1'])} %: the mean of the "
                "step logits is the clip logits (largest difference "
                f"{curve['max_relative_difference']:.1e} of the logits' scale)."
            )
    report.add_paragraph(text)
    report.add_image(results["figures"]["early_recognition"], "top-1 against frames seen", base_dir)
    report.add_table(
        ["model", "scored as"] + [f"k={k}" for k in early["frames_seen"]],
        [
            [name, curve["kind"]] + [_percent(value) for value in curve["top1"]]
            for name, curve in early["models"].items()
        ],
    )


def write_report(path: str, results: dict, settings: DemoSettings) -> str:
    """Writes `report.html` next to the figures it links."""
    base_dir = os.path.dirname(os.path.abspath(path))
    report = HTMLReport("selfy demo: motion that no single frame shows")
    report.add_paragraph(
        "Synthetic clips of a randomly textured object on a random background; the class is "
        "only in how the object moves ("
        + ", ".join(settings.classes)
        + "). Colours, textures, sizes, positions, orientations, speeds and noise are random and "
        "shared by all classes, so a model that looks at frames one at a time (TSN) cannot do "
        "better than chance, while models that relate frames (TSM's temporal shift, SELFY's "
        "spatio-temporal self-similarity) can."
    )
    report.add_heading("Accuracy")
    report.add_table(SUMMARY_HEADERS, summary_rows(results))
    report.add_paragraph(_claims_text(results))
    figures = results["figures"]
    report.add_image(figures["accuracy"], "validation top-1 per model; dots are seeds", base_dir)
    report.add_heading("Training curves")
    report.add_image(figures["training_curves"], "first seed of each model", base_dir)
    report.add_heading("Confusion matrices")
    for name, figure in figures["confusion"].items():
        report.add_image(figure, name, base_dir)

    _add_early_recognition(report, results, base_dir)

    prediction = results["prediction"]
    report.add_heading("Served prediction")
    report.add_paragraph(
        f"The SELFY model was exported for TF Serving to {os.path.relpath(prediction['export_path'], base_dir)} "
        f"and one clip of class '{prediction['true_label']}' "
        f"({os.path.relpath(prediction['video'], base_dir)}) was sent through its serving_default "
        "signature (JPEG frames, in-graph preprocessing):"
    )
    report.add_table(
        ["class", "probability"],
        [[entry["label"], f"{100 * entry['probability']:.1f} %"] for entry in prediction["top_k"]],
    )

    report.add_heading("What the models see")
    report.add_paragraph(
        "For a few validation clips: the frames; the motion in the pixels (soft-argmax over the "
        "STSS of small patches, one row of arrows per temporal offset); the trained SELFY "
        "block's own STSS at a query point and its soft-argmax motion field (coarser: the block "
        "works on a downsampled feature map); and Grad-CAM of the predicted class."
    )
    for entry in figures["clips"]:
        top = entry["model"]["top_k"][0]
        report.add_heading(
            f"{entry['label']} ({entry['media_id']}): SELFY predicts {top['label']} "
            f"({100 * top['probability']:.0f} %)",
            level=3,
        )
        report.add_image(entry["frames"], "frames", base_dir)
        report.add_image(entry["pixel_motion_field"], "motion in the pixels", base_dir)
        files = entry["model"]["files"]
        report.add_image(files["stss_query"], "SELFY block STSS at the query point", base_dir)
        report.add_image(files["motion_field"], "SELFY block STSS, soft-argmax motion", base_dir)
        report.add_image(files["gradcam"], "Grad-CAM", base_dir)
        for key in ("motion_field_gif", "gradcam_gif"):
            if key in files:
                report.add_image(files[key], key.replace("_", " "), base_dir)

    report.add_heading("Settings")
    report.add_preformatted(
        "\n".join(f"{key}: {value}" for key, value in results["settings"].items())
        + f"\nelapsed: {results.get('elapsed_seconds', 0.0):.0f} s"
        + f"\nTensorFlow {results['environment']['tensorflow']}, Keras {results['environment']['keras']}, "
        f"{results['environment']['cpu_count']} CPU(s)"
    )
    return report.write(path)
