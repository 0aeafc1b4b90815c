"""`selfy train`: train a model with the paper's recipe (resumable).

    selfy train --preset ssv1_selfy_r50_8f --data DATA_DIR --out RUN_DIR \\
        --set optimizer.base_lr=0.02 --set train.epochs=5

Re-running the same command after an interruption continues from the last
backup in `RUN_DIR/backup/`. The result (history, checkpoint paths) is
printed to stdout as JSON; progress and logs go to stderr and
`RUN_DIR/train.log`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from selfy_tf.cli._help import HelpFormatter

logger = logging.getLogger(__name__)


def register_subparser(subparsers: argparse._SubParsersAction) -> None:
    from trainer.configs import INIT_KINDS, PRECISION_NAMES, STRATEGY_NAMES, list_presets

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
    parser.add_argument("--data", required=True, metavar="DIR", help="converted dataset directory")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created or resumed)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override such as optimizer.base_lr=0.02, applied last (repeatable)",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default=None,
        help="distribution (sets runtime.strategy; multi_worker reads TF_CONFIG); default: from the config",
    )
    jit = parser.add_mutually_exclusive_group()
    jit.add_argument(
        "--jit", dest="jit", action="store_true", default=None, help="compile training with XLA (runtime.jit_compile)"
    )
    jit.add_argument(
        "--no-jit", dest="jit", action="store_false", help="no XLA (default on CPU: XLA is slower there)"
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
    parser.set_defaults(handler=run)


def _resolve_config(args: argparse.Namespace):
    from trainer import configs

    config = configs.get_preset(args.preset) if args.preset else configs.ExperimentConfig()
    for path in args.config:
        config = configs.load_yaml(path, base=config)
    overrides = list(args.overrides)
    if args.strategy is not None:
        overrides.append(f"runtime.strategy={args.strategy}")
    if args.jit is not None:
        overrides.append(f"runtime.jit_compile={str(args.jit).lower()}")
    if args.mixed_precision is not None:
        overrides.append(f"runtime.mixed_precision={args.mixed_precision}")
    if args.init is not None:
        overrides.append(f"model.init={args.init}")
    config = configs.apply_overrides(config, overrides)
    configs.validate(config)
    return config


def _is_first_worker() -> bool:
    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    except json.JSONDecodeError:
        return True
    return task.get("type") in (None, "chief") or (task.get("type") == "worker" and int(task.get("index", 0)) == 0)


def run(args: argparse.Namespace) -> int:
    config = _resolve_config(args)
    from trainer.train import train

    if _is_first_worker():
        os.makedirs(args.out, exist_ok=True)
        handler = logging.FileHandler(os.path.join(args.out, "train.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    # Keras prints progress to stdout; keep stdout for the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        result = train(config, args.data, args.out)
    print(json.dumps(result.to_dict()))
    return 0
