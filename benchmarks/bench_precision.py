"""Float32 precision of training against float64: the SELFY block and 5 SGD steps.

Measures how far selfy-tf's float32 training computations are from a float64
run of the PyTorch reference (`selfy_tf.weights.torch_reference`, which
reproduces the official release), next to how far PyTorch's own float32 run
is from the same float64 run, for each choice of the models'
`batch_norm_statistics` (who computes training-mode batch statistics: exact
block sums or TensorFlow's fused training kernel, docs/architecture.md).
Runs on the CPU with 2 threads; no figure here is a time.

Parts:

- `block_*`, `extraction_*`: a SELFY block (reference widths; input
  `[clips * frames, size, size, in_channels]`, default 2 clips x 8 frames x
  28 x 28 x 128: the reference map size with ResNet-18's 128 channels, so the
  first STSS extraction activation is the reference `[15680, 9, 9, 4]`) in
  training mode, and its STSS extraction alone on the float64 block's STSS
  volume. Weights: PyTorch's initialisation with random batch-norm
  parameters, moved into the Keras block with the project's converter
  (`selfy_tf.weights.selfy_block_mapping`). Inputs: rectified normal
  features (post-ReLU like the backbone's). For the output, the input
  gradient and the worst weight gradient (of `sum(output * r)`, `r` a fixed
  normal tensor) the error is `||value - float64|| / ||float64||` (L2 norms;
  for the weight gradients the largest over the variables);
  `*_max_error` is the largest of the three. Keras variants: `exact` (every batch
  norm exact), `tensorflow` (TensorFlow's kernel in every batch norm) and
  `tensorflow_but_extraction` (exact only in the STSS extraction).
- `sgd_*`: 5 SGD steps from the official-code parity fixture
  (`shared/fixtures/official_selfy_tsm_r18`: SELFYNet-TSM-ResNet-18, 2
  frames, 10 classes) on fixed random clips (default 4 clips x 2 frames x
  128 x 128) and labels, dropout 0, the trainer's optimizer: `TorchSGD`
  with the official parameter groups (`trainer.optimizer`), Nesterov
  momentum 0.9, torch-style weight decay 5e-4, global-norm clip 20,
  learning rate 0.01 x clips / 64 (the recipe's scaling), through
  `model.train_on_batch` as the trainer compiles it. The PyTorch runs use
  `torch.optim.SGD` with the same groups and `clip_grad_norm_`. Figures:
  the L2 distance of all trainable weights after the steps from the float64
  PyTorch run's (`*_weights_distance`, and divided by the float64 run's own
  L2 displacement, `*_weights_relative`), the relative L2 difference of the
  eval-mode logits after the steps (`*_logits_error`) and the largest
  relative difference of the step losses (`*_loss_error`). Keras variants: the models'
  `batch_norm_statistics` choices `exact` (the default), `tensorflow_backbone`
  and `tensorflow`.
- `*_vs_torch_ratio`: each Keras error divided by PyTorch float32's error of
  the same kind, measured in the same run (<= 1: as close to float64 as the
  official code; the bar is 3 for the block and 1 for the SGD steps).

Example:

    python benchmarks/bench_precision.py --results-file /tmp/precision.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
from pathlib import Path

import keras
import numpy as np
from _common import limit_threads, write_results

logger = logging.getLogger("bench_precision")

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "official_selfy_tsm_r18"
BLOCK_VARIANTS = ("exact", "tensorflow", "tensorflow_but_extraction")
SGD_VARIANTS = ("exact", "tensorflow_backbone", "tensorflow")


def _relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """`||value - reference|| / ||reference||` (L2 norms over all elements).

    Norms rather than the largest element: a ReLU input that float32
    rounding moves across 0 changes a few gradient elements by O(1) in any
    float32 run, and the largest element would report that chance event.
    """
    reference = np.asarray(reference, np.float64)
    scale = max(float(np.linalg.norm(reference)), 1e-30)
    return float(np.linalg.norm(np.asarray(value, np.float64) - reference) / scale)


# The SELFY block --------------------------------------------------------------


def _torch_block_run(module, inputs: np.ndarray, upstream: np.ndarray, dtype) -> dict:
    """Training-mode forward and gradients of the PyTorch block in `dtype`.

    `inputs` and `upstream` are channels-last; results are channels-last
    too, with the parameter gradients keyed by state-dict key.
    """
    import torch

    module = module.to(dtype).train()
    x = torch.tensor(np.transpose(inputs, (0, 3, 1, 2)), dtype=dtype, requires_grad=True)
    module.zero_grad()
    outputs = module(x)
    weights = torch.tensor(np.transpose(upstream, (0, 3, 1, 2)), dtype=dtype)
    (outputs * weights).sum().backward()
    return {
        "outputs": np.transpose(outputs.detach().numpy(), (0, 2, 3, 1)),
        "input_grad": np.transpose(x.grad.numpy(), (0, 2, 3, 1)),
        "weight_grads": {
            key: parameter.grad.numpy() for key, parameter in module.named_parameters()
        },
    }


def _torch_extraction_run(module, similarity: np.ndarray, upstream: np.ndarray, dtype) -> dict:
    """The same for the extraction alone: `[B, T, H, W, L, U, V]` -> `[B, T, H, W, L, C]`."""
    import torch

    module = module.to(dtype).train()
    x = torch.tensor(similarity, dtype=dtype, requires_grad=True)
    module.zero_grad()
    outputs, length = module(x)
    batch, frames, height, width = similarity.shape[:4]
    # [(b L), c, t, h, w] -> [b, t, h, w, L, c]
    outputs = outputs.reshape(batch, length, -1, frames, height, width).permute(0, 3, 4, 5, 1, 2)
    (outputs * torch.tensor(upstream, dtype=dtype)).sum().backward()
    return {
        "outputs": outputs.detach().numpy(),
        "input_grad": x.grad.numpy(),
        "weight_grads": {
            key: parameter.grad.numpy() for key, parameter in module.named_parameters()
        },
    }


def _keras_run(layer, inputs: np.ndarray, upstream: np.ndarray) -> dict:
    """Training-mode forward and gradients of a Keras layer (TensorFlow backend)."""
    import tensorflow as tf

    x = tf.constant(inputs, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, training=True)
        loss = tf.reduce_sum(outputs * tf.constant(upstream, tf.float32))
    gradients = tape.gradient(loss, [x, *layer.trainable_variables])
    return {
        "outputs": outputs.numpy(),
        "input_grad": gradients[0].numpy(),
        "weight_grads": {
            variable.path: gradient.numpy()
            for variable, gradient in zip(layer.trainable_variables, gradients[1:])
        },
    }


def _errors(run: dict, reference: dict, records, keras_keys: bool) -> dict:
    """Relative errors of a run against the float64 reference run.

    `records` are the converter's `WeightMapping`s (torch key -> Keras
    variable); Keras gradients are compared in the Keras layout, PyTorch
    float32 gradients in PyTorch's.
    """
    weight_errors = []
    for record in records:
        if record.torch_key not in reference["weight_grads"]:
            continue  # moving statistics: not trainable
        expected = reference["weight_grads"][record.torch_key]
        if keras_keys:
            value = run["weight_grads"][record.variable.path]
            expected = record.convert(expected)
        else:
            value = run["weight_grads"][record.torch_key]
        weight_errors.append(_relative_error(value, expected))
    errors = {
        "output_error": _relative_error(run["outputs"], reference["outputs"]),
        "input_grad_error": _relative_error(run["input_grad"], reference["input_grad"]),
        "weight_grad_error": max(weight_errors),
    }
    errors["max_error"] = max(errors.values())
    return errors


def _block_batch_norms(stage) -> list:
    """The `FusedBatchNormalization` layers of one stage of the block."""
    from selfy_tf.layers._batch_norm import FusedBatchNormalization

    return [
        layer for layer in stage._flatten_layers(include_self=False)
        if isinstance(layer, FusedBatchNormalization)
    ]


def _set_block_statistics(block, variant: str) -> None:
    """Sets the `training_statistics` of the block's batch norms for a variant."""
    for stage in (block.stss_transformation, block.stss_extraction, block.stss_integration):
        statistics = "tensorflow"
        if variant == "exact" or (
            variant == "tensorflow_but_extraction" and stage is block.stss_extraction
        ):
            statistics = "exact"
        for norm in _block_batch_norms(stage):
            norm.training_statistics = statistics


def measure_block(args: argparse.Namespace, results: dict) -> None:
    """The `block_*` and `extraction_*` figures."""
    import torch

    from selfy_tf.layers import SELFYBlock
    from selfy_tf.weights import selfy_block_mapping
    from selfy_tf.weights.torch_reference import SELFYBlockReference, randomize_batch_norms

    frames = args.block_frames
    shape = (args.block_clips * frames, args.block_size, args.block_size, args.block_channels)
    torch.manual_seed(0)
    reference = SELFYBlockReference(args.block_channels, frames)
    randomize_batch_norms(reference, seed=0)
    rng = np.random.default_rng(0)
    inputs = np.maximum(rng.normal(size=shape), 0).astype(np.float32)
    upstream = rng.normal(size=shape).astype(np.float32)

    block = SELFYBlock(num_frames=frames, zero_init_last=False)
    block.build(shape)
    records = selfy_block_mapping(block, prefix="")
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    for record in records:
        record.variable.assign(record.convert(state[record.torch_key]))
    num_norms = sum(
        len(_block_batch_norms(stage))
        for stage in (block.stss_transformation, block.stss_extraction, block.stss_integration)
    )
    logger.info("block %s, %d batch norms", shape, num_norms)

    logger.info("block: PyTorch float64 and float32")
    exact_run = _torch_block_run(reference, inputs, upstream, torch.float64)
    float32_run = _torch_block_run(reference, inputs, upstream, torch.float32)
    for key, value in _errors(float32_run, exact_run, records, keras_keys=False).items():
        results[f"block_torch_float32_{key}"] = value

    # The extraction alone, on the float64 STSS volume (rounded to float32).
    with torch.no_grad():
        reference.to(torch.float64).train()
        x = torch.tensor(np.transpose(inputs, (0, 3, 1, 2)), dtype=torch.float64)
        similarity = reference.stss_transformation(x).numpy().astype(np.float32)
    extraction_upstream = rng.normal(
        size=block.stss_extraction.compute_output_shape(similarity.shape)
    ).astype(np.float32)
    extraction_records = [
        dataclasses.replace(record, torch_key=record.torch_key[len("stss_extraction."):])
        for record in records
        if record.torch_key.startswith("stss_extraction.")
    ]
    logger.info("extraction %s: PyTorch float64 and float32", similarity.shape)
    extraction_exact = _torch_extraction_run(reference.stss_extraction, similarity, extraction_upstream, torch.float64)
    extraction_float32 = _torch_extraction_run(reference.stss_extraction, similarity, extraction_upstream, torch.float32)
    for key, value in _errors(extraction_float32, extraction_exact, extraction_records, keras_keys=False).items():
        results[f"extraction_torch_float32_{key}"] = value

    for variant in BLOCK_VARIANTS:
        _set_block_statistics(block, variant)
        logger.info("block and extraction: Keras float32, %s", variant)
        errors = _errors(_keras_run(block, inputs, upstream), exact_run, records, keras_keys=True)
        for key, value in errors.items():
            results[f"block_{variant}_{key}"] = value
        errors = _errors(
            _keras_run(block.stss_extraction, similarity, extraction_upstream),
            extraction_exact,
            extraction_records,
            keras_keys=True,
        )
        for key, value in errors.items():
            results[f"extraction_{variant}_{key}"] = value


# 5 SGD steps from the official weights ---------------------------------------


def _torch_parameter_groups(model, records, policies: dict, learning_rate: float, weight_decay: float) -> list:
    """`torch.optim.SGD` parameter groups with the Keras variables' policies.

    The policy of each PyTorch parameter is the one `trainer.optimizer`
    gives the Keras variable it converts to, so both runs share one grouping.
    """
    by_key = {f"module.{name}": parameter for name, parameter in model.named_parameters()}
    groups: dict[tuple[float, float], list] = {}
    for record in records:
        if record.torch_key not in by_key:
            continue
        lr_mult, decay_mult = policies[record.variable.path]
        groups.setdefault((lr_mult, decay_mult), []).append(by_key.pop(record.torch_key))
    if by_key:
        raise ValueError(f"PyTorch parameters without a Keras variable: {sorted(by_key)}.")
    return [
        {"params": params, "lr": learning_rate * lr_mult, "weight_decay": weight_decay * decay_mult}
        for (lr_mult, decay_mult), params in groups.items()
    ]


def _torch_logits(model, frames, dtype):
    """The reference's logits, its preprocessing in `dtype` too (float32 or float64)."""
    import torch

    return model(torch.tensor(frames, dtype=dtype))


def _torch_sgd_run(state: dict, clips, labels, dtype, records, policies, settings) -> dict:
    import torch
    from torch.nn import functional as F

    from selfy_tf.weights import torch_reference

    model = torch_reference.build_reference("selfy_tsm_r18", 10, clips.shape[1])
    model.load_state_dict({key[len("module."):]: value for key, value in state.items()})
    model = model.to(dtype)
    optimizer = torch.optim.SGD(
        _torch_parameter_groups(model, records, policies, settings["learning_rate"], settings["weight_decay"]),
        lr=settings["learning_rate"],
        momentum=settings["momentum"],
        nesterov=settings["nesterov"],
    )
    target = torch.tensor(labels)
    losses = []
    model.train()
    for _ in range(settings["steps"]):
        optimizer.zero_grad()
        loss = F.cross_entropy(_torch_logits(model, clips, dtype), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip_global_norm"])
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = _torch_logits(model, clips, dtype).double().numpy()
    weights = {f"module.{name}": parameter.detach().double().numpy() for name, parameter in model.named_parameters()}
    return {"losses": np.array(losses), "logits": logits, "weights": weights}


def _keras_sgd_run(batch_norm_statistics: str, clips, labels, settings) -> dict:
    from selfy_tf.models import create_model
    from selfy_tf.weights import load_official_checkpoint, torch_weight_mapping
    from trainer import configs
    from trainer.train import compile_for_training

    model = create_model(
        "selfy_tsm_r18",
        num_classes=10,
        num_frames=clips.shape[1],
        input_size=clips.shape[2],
        dropout=0.0,
        batch_norm_statistics=batch_norm_statistics,
    )
    load_official_checkpoint(model, FIXTURE / "checkpoint.pth.tar")
    config = configs.ExperimentConfig()
    config.model.num_classes = 10
    compile_for_training(model, config, settings["learning_rate"], jit_compile=False)
    one_hot = np.eye(10, dtype=np.float32)[labels]
    losses = [
        float(model.train_on_batch(clips, one_hot, return_dict=True)["loss"])
        for _ in range(settings["steps"])
    ]
    logits = np.asarray(model(clips, training=False), np.float64)
    weights = {}
    for record in torch_weight_mapping(model):
        if record.variable.trainable:
            weights[record.torch_key] = (record, np.asarray(record.variable, np.float64))
    return {"losses": np.array(losses), "logits": logits, "weights": weights}


def _sgd_distances(run: dict, reference: dict, start: dict, keras_layout: bool) -> dict:
    """Weight, logit and loss distances of a run from the float64 PyTorch run."""
    squared, displacement = 0.0, 0.0
    for key, expected in reference["weights"].items():
        initial = start[key]
        if keras_layout:
            record, value = run["weights"][key]
            expected, initial = record.convert(expected), record.convert(initial)
        else:
            value = run["weights"][key]
        squared += float(np.sum((value - expected) ** 2))
        displacement += float(np.sum((expected - initial) ** 2))
    distance = np.sqrt(squared)
    return {
        "weights_distance": distance,
        "weights_relative": distance / np.sqrt(displacement),
        "logits_error": _relative_error(run["logits"], reference["logits"]),
        "loss_error": float(np.max(np.abs(run["losses"] - reference["losses"]) / np.abs(reference["losses"]))),
    }


def measure_sgd(args: argparse.Namespace, results: dict) -> None:
    """The `sgd_*` figures."""
    import torch

    from selfy_tf.models import create_model
    from selfy_tf.weights import _torch, torch_weight_mapping
    from trainer import configs
    from trainer.optimizer import group_policies, parameter_groups

    optimizer_config = configs.OptimizerConfig()
    settings = {
        "steps": args.sgd_steps,
        "learning_rate": optimizer_config.base_lr * args.sgd_clips / optimizer_config.base_batch_size,
        "momentum": optimizer_config.momentum,
        "nesterov": optimizer_config.nesterov,
        "weight_decay": optimizer_config.weight_decay,
        "clip_global_norm": optimizer_config.clip_global_norm,
    }
    results.update({f"sgd_{key}": value for key, value in settings.items()})
    rng = np.random.default_rng(args.sgd_seed)
    clips = rng.integers(0, 256, (args.sgd_clips, 2, args.sgd_size, args.sgd_size, 3)).astype(np.float32)
    labels = rng.integers(0, 10, args.sgd_clips)
    state = _torch.load_torch_state_dict(str(FIXTURE / "checkpoint.pth.tar"))
    state = {key: torch.from_numpy(np.asarray(value)) for key, value in state.items()}

    # One grouping for both frameworks: the trainer's, by converted variable.
    model = create_model("selfy_tsm_r18", num_classes=10, num_frames=2, input_size=args.sgd_size, dropout=0.0)
    records = torch_weight_mapping(model)
    policies = group_policies(parameter_groups(model))
    start = {key: value.double().numpy() for key, value in state.items()}

    logger.info("SGD: PyTorch float64 and float32")
    reference = _torch_sgd_run(state, clips, labels, torch.float64, records, policies, settings)
    torch_float32 = _torch_sgd_run(state, clips, labels, torch.float32, records, policies, settings)
    results["sgd_float64_losses"] = [round(loss, 6) for loss in reference["losses"]]
    results["sgd_torch_float32_losses"] = [round(loss, 6) for loss in torch_float32["losses"]]
    for key, value in _sgd_distances(torch_float32, reference, start, keras_layout=False).items():
        results[f"sgd_torch_float32_{key}"] = value
    for variant in SGD_VARIANTS:
        logger.info("SGD: Keras float32, batch_norm_statistics=%s", variant)
        run = _keras_sgd_run(variant, clips, labels, settings)
        results[f"sgd_{variant}_losses"] = [round(loss, 6) for loss in run["losses"]]
        for key, value in _sgd_distances(run, reference, start, keras_layout=True).items():
            results[f"sgd_{variant}_{key}"] = value


def _record_ratios(results: dict) -> None:
    """Each Keras error against PyTorch float32's error of the same kind."""
    for part, variants, kinds in (
        ("block", BLOCK_VARIANTS, ("max_error", "output_error", "input_grad_error", "weight_grad_error")),
        ("extraction", BLOCK_VARIANTS, ("max_error", "output_error", "input_grad_error", "weight_grad_error")),
        ("sgd", SGD_VARIANTS, ("weights_distance", "logits_error", "loss_error")),
    ):
        for kind in kinds:
            baseline = results.get(f"{part}_torch_float32_{kind}")
            for variant in variants:
                value = results.get(f"{part}_{variant}_{kind}")
                if baseline and value is not None:
                    results[f"{part}_{variant}_{kind}_vs_torch_ratio"] = round(value / baseline, 3)
    for key, value in list(results.items()):
        if isinstance(value, float) and key.endswith(("_error", "_distance", "_relative")):
            results[key] = float(f"{value:.3g}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-clips", type=int, default=2, help="clips in the block input (default 2)")
    parser.add_argument("--block-frames", type=int, default=8, help="frames per clip in the block input (default 8)")
    parser.add_argument("--block-size", type=int, default=28, help="height and width of the block input (default 28)")
    parser.add_argument(
        "--block-channels", type=int, default=128, help="channels of the block input (default 128; 512 for ResNet-50)"
    )
    parser.add_argument("--sgd-clips", type=int, default=4, help="clips per SGD step (default 4)")
    parser.add_argument("--sgd-size", type=int, default=128, help="frame size of the SGD clips (default 128)")
    parser.add_argument("--sgd-steps", type=int, default=5, help="SGD steps (default 5)")
    parser.add_argument("--sgd-seed", type=int, default=1, help="seed of the SGD clips and labels (default 1)")
    parser.add_argument("--skip-block", action="store_true", help="skip the SELFY block part")
    parser.add_argument("--skip-sgd", action="store_true", help="skip the SGD part")
    parser.add_argument("--results-file", default=None, help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if keras.config.backend() != "tensorflow":
        raise SystemExit("bench_precision compares TensorFlow's batch norm kernels: run it with KERAS_BACKEND=tensorflow.")
    import tensorflow as tf
    import torch

    limit_threads(2)
    torch.set_num_threads(2)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the trainer package
    results = {
        "benchmark": "precision",
        "keras_backend": keras.config.backend(),
        "tf_version": tf.__version__,
        "torch_version": torch.__version__,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": 2,
        # oneDNN's CPU batch norm kernels sum less precisely than Eigen's
        # (docs/architecture.md): on by default on x86, off with "0".
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "block_shape": [args.block_clips * args.block_frames, args.block_size, args.block_size, args.block_channels],
        "block_frames": args.block_frames,
        "sgd_clip_shape": [args.sgd_clips, 2, args.sgd_size, args.sgd_size, 3],
        "sgd_seed": args.sgd_seed,
        "load_average_start": os.getloadavg()[0],
    }
    for name, part, skip in (("block", measure_block, args.skip_block), ("sgd", measure_sgd, args.skip_sgd)):
        if skip:
            continue
        try:
            part(args, results)
        except Exception as error:  # noqa: BLE001 - record and go on with the other part
            logger.exception("part %s failed", name)
            results[f"{name}_error"] = f"{type(error).__name__}: {error}"[:500]
    _record_ratios(results)
    results["load_average_end"] = os.getloadavg()[0]
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
