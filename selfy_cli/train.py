"""`selfy train`: train a model with the paper's recipe (resumable).

    selfy train --preset ssv1_selfy_r50_8f --data DATA_DIR --out RUN_DIR \\
        --set optimizer.base_lr=0.02 --set train.epochs=5

    selfy train --preset tiny_cpu --data DATA_DIR --out RUN_DIR --epochs 10 --lr 0.05

    selfy train --backend jax --preset tiny_cpu --data synthetic:motion --out RUN_DIR

`--backend jax` (or `KERAS_BACKEND=jax`) trains with Keras on JAX, over all
local devices (`keras.distribution.DataParallel`); `--data` may then also be
in-memory clips (`synthetic:motion` or a `.npz` file), which need no
TensorFlow. See docs/training.md, "Training on JAX".

Re-running the same command after an interruption continues from the last
backup in `RUN_DIR/backup/`. The number of classes comes from the data's
`labels.txt` unless the preset or `--set model.num_classes=N` fixes it. The
result (history, checkpoint paths, warnings) is written to
`RUN_DIR/result.json`; on a terminal the run ends with a short summary, and
the JSON goes to stdout with `--json` or when stdout is not a terminal.
Progress and logs go to stderr and `RUN_DIR/train.log`. A run refused
before its first backup leaves no run directory behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys

from selfy_cli._help import HelpFormatter

logger = logging.getLogger(__name__)

BACKENDS = ("tensorflow", "jax")
# Set in the environment of a process this command restarted, so that it
# never restarts again.
_RESTARTED = "SELFY_TRAIN_BACKEND_RESTARTED"


def _use_backend(backend: str | None) -> None:
    """Makes `backend` the Keras backend of this process, restarting it if needed.

    Keras reads `KERAS_BACKEND` once, when it is first imported, and the
    `selfy` command imports it to build its parser (the model names). When
    the backend asked for is not the one loaded, the process starts again
    with the same command line and `KERAS_BACKEND` set: there is no other way
    to switch. A Python caller that passed its own arguments to `main` (not
    the command line) gets an error instead of a restart.

    Raises:
        ValueError: the backend cannot be switched in this process.
    """
    if backend is None:
        return
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
        return
    import keras

    if keras.backend.backend() == backend:
        return
    started_with_backend = any(item == "--backend" or item.startswith("--backend=") for item in sys.argv[1:])
    if os.environ.get(_RESTARTED) or not started_with_backend:
        raise ValueError(
            f"--backend {backend}: Keras is already running on {keras.backend.backend()!r} in this process. "
            f"Set KERAS_BACKEND={backend} before Python starts."
        )
    logger.debug("Restarting with KERAS_BACKEND=%s.", backend)
    # `execve` replaces the process without running exit handlers; run them
    # now (the stderr filter of `selfy` puts the real stderr back).
    import atexit

    atexit._run_exitfuncs()
    environment = {**os.environ, "KERAS_BACKEND": backend, _RESTARTED: "1"}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)


def register_subparser(subparsers: argparse._SubParsersAction) -> None:
    from trainer.configs import INIT_KINDS, PRECISION_NAMES, STRATEGY_NAMES
    from trainer.presets import list_presets

    parser = subparsers.add_parser(
        "train",
        help="train a model (resumable; MirroredStrategy / multi-worker)",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=list_presets(),
        default=None,
        help="named experiment to start from (default: the config defaults)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="YAML config file(s) applied after the preset, in order (repeatable)",
    )
    parser.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="converted dataset directory, or in-memory clips: synthetic:motion[:TRAIN[:VALIDATION[:SIZE]]] or FILE.npz",
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created or resumed)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override such as optimizer.base_lr=0.02, applied last (repeatable)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: from the config)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="data.batch_size, clips per replica (default: from the config)"
    )
    parser.add_argument(
        "--lr", type=float, default=None,
        help="optimizer.lr, the peak learning rate of the global batch (default: base_lr scaled by the batch)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (always when stdout is not a terminal)"
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default=None,
        help="distribution (sets runtime.strategy; multi_worker reads TF_CONFIG); default: from the config",
    )
    jit = parser.add_mutually_exclusive_group()
    jit.add_argument(
        "--jit", dest="jit", action="store_true", default=None,
        help="compile training with XLA (runtime.jit_compile; default on GPU/TPU)",
    )
    jit.add_argument(
        "--no-jit", dest="jit", action="store_false",
        help="no XLA (default on CPU: a full-size model's step is slower with XLA there; tiny_cpu's is "
        "faster, but XLA's compilation of tens of seconds costs more than it saves in short runs; "
        "see benchmarks/README.md, Training)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=PRECISION_NAMES,
        default=None,
        help="runtime.mixed_precision; default: from the config",
    )
    parser.add_argument(
        "--init",
        default=None,
        metavar="KIND:PATH",
        help=f"initial weights, KIND one of {', '.join(INIT_KINDS)} (model.init); default: random",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend to train with (default: KERAS_BACKEND, else tensorflow)",
    )
    parser.set_defaults(handler=run)


def _resolve_config(args: argparse.Namespace):
    from trainer import configs, presets

    config = presets.get_preset(args.preset) if args.preset else configs.ExperimentConfig()
    for path in args.config:
        config = configs.load_yaml(path, base=config)
    shortcuts = (("train.epochs", args.epochs), ("data.batch_size", args.batch_size), ("optimizer.lr", args.lr))
    # Before the `--set`s, so an explicit `--set` of the same key wins.
    overrides = [f"{key}={value}" for key, value in shortcuts if value is not None]
    overrides += list(args.overrides)
    if args.strategy is not None:
        overrides.append(f"runtime.strategy={args.strategy}")
    if args.jit is not None:
        overrides.append(f"runtime.jit_compile={str(args.jit).lower()}")
    if args.mixed_precision is not None:
        overrides.append(f"runtime.mixed_precision={args.mixed_precision}")
    if args.init is not None:
        overrides.append(f"model.init={args.init}")
    config = configs.resolve_model(configs.apply_overrides(config, overrides))
    configs.validate(config)
    return config


def _is_first_worker() -> bool:
    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    except json.JSONDecodeError:
        return True
    return task.get("type") in (None, "chief") or (task.get("type") == "worker" and int(task.get("index", 0)) == 0)


def _print_summary(result: dict, data_dir: str) -> None:
    from trainer.configs import LAST_EPOCH

    history = result["history"]
    epochs = result["epochs_completed"]
    print(
        f"Trained {epochs} epoch{'' if epochs == 1 else 's'} ({result['global_step']} steps) into {result['run_dir']}"
    )
    if history.get("epoch"):
        last = ", ".join(
            f"{key} {history[key][-1]:.4g}" for key in ("loss", "top1", "val_loss", "val_top1") if history.get(key)
        )
        print(f"  last epoch: {last}")
    best = result["best_metric"]
    if best["name"] == LAST_EPOCH and best["epoch"] is not None:
        print(f"  best.keras is the last epoch's model (epoch {best['epoch']}, train.monitor={LAST_EPOCH}): "
              f"{result['best_checkpoint']}")
    elif best["value"] is not None:
        print(f"  best {best['name']} {best['value']:.4g} (epoch {best['epoch']}): {result['best_checkpoint']}")
    for warning in result["warnings"]:
        print(f"  warning: {warning}")
    print(f"  next: selfy eval {result['run_dir']} --data {data_dir}")
    from selfy_tf.run_dir import RunPaths

    print(f"  details: {RunPaths(result['run_dir']).result}")


def _detach(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def run(args: argparse.Namespace) -> int:
    _use_backend(args.backend)
    config = _resolve_config(args)
    from selfy_tf.run_dir import RunPaths
    from trainer.train import train

    # Only the first worker owns the run directory (other workers share it).
    created = _is_first_worker() and not os.path.exists(args.out)
    handler = None
    if _is_first_worker():
        os.makedirs(args.out, exist_ok=True)
        handler = logging.FileHandler(RunPaths(args.out).train_log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    try:
        # Keras prints progress to stdout; keep stdout for the result.
        with contextlib.redirect_stdout(sys.stderr):
            result = train(config, args.data, args.out).to_dict()
    except BaseException:
        # A run refused (or stopped) before its first backup has nothing to
        # resume: leave no half-made run directory behind.
        if created and not os.path.exists(RunPaths(args.out).backup_file):
            _detach(handler)
            handler = None
            shutil.rmtree(args.out, ignore_errors=True)
        raise
    finally:
        _detach(handler)
    if args.json or not sys.stdout.isatty():
        print(json.dumps(result))
    else:
        _print_summary(result, args.data)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m selfy_cli.train ARGS`: `selfy train ARGS` on its own.

    For machines without TensorFlow (training on JAX from in-memory clips):
    the full `selfy` parser imports TensorFlow to register the export and
    LiteRT commands, this one registers `train` only.
    """
    from selfy_cli.main import setup_logging

    parser = argparse.ArgumentParser(prog="python -m selfy_cli.train")
    register_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    setup_logging(verbose=False)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"selfy train: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
