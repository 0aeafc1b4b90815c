"""Options that mean the same thing in every `selfy` command that takes them.

MODEL is always a training run directory, a `.keras` file or an exported
SavedModel, opened by `selfy_tf.run_dir.load_model` (`selfy eval` also takes
a `.tflite` file): positional where the model is the command's subject
(`eval`, `export`, `tflite`), `--model` where a video is (`predict`, `viz`).
`--eval-size` / `--scale-size` override the evaluation view stored with the
model (`selfy_tf.eval_view`).

Nothing here imports TensorFlow or Keras: `selfy --help` and bad usage
answer without them.
"""

from __future__ import annotations

import argparse
import collections.abc
from typing import Any, Callable, Iterator, Sequence

from selfy_tf import compat

MODEL_HELP = (
    "training run directory (its checkpoints/best.keras), .keras file, or exported SavedModel "
    "(BASE/<name> for the newest version, or BASE/<name>/<version>)"
)
LITERT_MODEL_HELP = MODEL_HELP + ", or .tflite file (run with LiteRT)"
KERAS_MODEL_HELP = (
    "training run directory (its checkpoints/best.keras) or .keras file; not an exported "
    "SavedModel (this command needs the Keras model)"
)


class DeferredChoices(collections.abc.Sequence):
    """A flag's choices, read from the module that owns them when first needed.

    The model registry and the converter's modes live in modules that
    import TensorFlow. argparse reads `choices` only to check a value given
    on the command line and to list them in the command's own `--help`, so
    their owner is imported then, not to print `selfy --help` or a usage
    error. Give such a flag a `metavar`: the usage line lists the choices
    of a flag without one.

    Args:
        load: returns the choices.
    """

    def __init__(self, load: Callable[[], Sequence[str]]) -> None:
        self._load = load
        self._choices: tuple[str, ...] | None = None

    def _resolved(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices

    def __getitem__(self, index: Any) -> Any:
        return self._resolved()[index]

    def __len__(self) -> int:
        return len(self._resolved())

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolved())

    def __contains__(self, value: object) -> bool:
        return value in self._resolved()


def add_model_argument(
    parser: argparse.ArgumentParser, *, option: bool = False, keras_only: bool = False, litert: bool = False
) -> None:
    """Adds MODEL: positional (`args.model`), or `--model MODEL` (required) with `option`.

    `keras_only`: the command needs the Keras model; `litert`: it also takes a `.tflite` file.
    """
    help_text = KERAS_MODEL_HELP if keras_only else LITERT_MODEL_HELP if litert else MODEL_HELP
    if option:
        parser.add_argument("--model", metavar="MODEL", required=True, help=help_text)
    else:
        parser.add_argument("model", metavar="MODEL", help=help_text)


def add_labels_argument(parser: argparse.ArgumentParser) -> None:
    """Adds `--labels FILE`, overriding the class names found with a Keras MODEL."""
    parser.add_argument(
        "--labels",
        metavar="FILE",
        default=None,
        help="class names, one per line (default: the run's labels.txt, else one beside the "
        ".keras file)",
    )


def _size(text: str) -> tuple[int, int]:
    from tfrecords.video import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_view_arguments(parser: argparse.ArgumentParser, scale_alias: str | None = None) -> None:
    """Adds `--eval-size HxW` | `--scale-size N`, and `scale_alias` as a hidden, deprecated `--scale-size`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--eval-size",
        type=_size,
        metavar="HxW",
        default=None,
        help="resize every frame to HEIGHTxWIDTH before the centre crop, e.g. 240x320 "
        "(default: the evaluation view stored with the model)",
    )
    group.add_argument(
        "--scale-size",
        type=_positive_int,
        metavar="N",
        default=None,
        help="resize the short side to N (aspect ratio kept) before the crop instead "
        "(default: the stored view, else input size x 256/224)",
    )
    if scale_alias:
        group.add_argument(
            scale_alias,
            dest="scale_size",
            type=_positive_int,
            action=compat.deprecated_alias("--scale-size"),
            help=argparse.SUPPRESS,
        )


def view_override(args: argparse.Namespace) -> dict[str, Any] | None:
    """The evaluation view asked for on the command line (`EvalView.resize_settings()`), or None."""
    if args.eval_size is not None:
        return {"eval_size": list(args.eval_size)}
    if args.scale_size is not None:
        return {"scale_size": args.scale_size}
    return None


__all__ = ["DeferredChoices", "add_labels_argument", "add_model_argument", "add_view_arguments", "view_override"]
