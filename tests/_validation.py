"""Shared by the validation tests: a run's validation figures recomputed with NumPy."""

from __future__ import annotations

import os

import numpy as np


def reference_validation(run_dir: str, data_dir: str, num_clips: int = 1, num_crops: int = 1) -> dict[str, float]:
    """Top-1, top-5 and mean cross-entropy of `RUN/checkpoints/last.keras` on
    every validation clip, one at a time, scores averaged over the views as
    `selfy eval` does, computed in NumPy from the model's logits.

    The clips come from the plain evaluation pipeline (no padding, no
    weights, batches of one clip), with the view of the run's config.
    """
    from selfy_tf.run_dir import load_model
    from tfrecords import make_dataset, open_split
    from trainer import configs

    config = configs.load_yaml(os.path.join(run_dir, "config.yaml"))
    model = load_model(os.path.join(run_dir, "checkpoints", "last.keras")).model
    split = open_split(data_dir, "validation")
    dataset = make_dataset(
        split.files,
        training=False,
        batch_size=1,
        eval_view=config.eval_view().with_views(num_clips, num_crops),
    )
    probabilities, labels = [], []
    for frames, label in dataset:
        views = frames.numpy().reshape((-1, *frames.shape[-4:]))
        logits = np.asarray(model.predict(views, verbose=0), np.float64)
        exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities.append((exponentials / exponentials.sum(axis=1, keepdims=True)).mean(axis=0))
        labels.append(int(label.numpy()[0]))
    probabilities, labels = np.stack(probabilities), np.asarray(labels)
    assert len(labels) == split.num_examples
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    top_k = min(5, probabilities.shape[1])
    return {
        "num_examples": len(labels),
        "val_top1": float(np.mean(ranked[:, 0] == labels)),
        "val_top5": float(np.mean(np.any(ranked[:, :top_k] == labels[:, None], axis=1))),
        "val_loss": float(np.mean(-np.log(probabilities[np.arange(len(labels)), labels]))),
    }
