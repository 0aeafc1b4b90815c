"""`selfy`: the command line of selfy-tf.

    selfy --help
    selfy --version

Each subcommand lives in its own module under `selfy_cli/` that defines
`register_subparser(subparsers)`; this module only builds the top parser,
sets up logging once and maps expected errors to exit status 1.

Building the parser imports no TensorFlow, Keras or JAX (the command
modules import them in their handlers, and choices owned by modules that
need them are `_options.DeferredChoices`), so `selfy --help` and bad usage
answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from selfy_cli._errors import error_line, is_expected, pipeline_check_message
from selfy_cli._help import HelpFormatter
from selfy_tf.runtime import set_tensorflow_environment_defaults
from selfy_tf.version import __version__

# Before any command module imports TensorFlow (quiet C++ logs, BFC CPU allocator).
set_tensorflow_environment_defaults()

# Subcommand modules, in the order `selfy --help` lists them.
_COMMAND_MODULES: tuple[str, ...] = (
    "selfy_cli.tfrecords",
    "selfy_cli.convert_weights",
    "selfy_cli.train",
    "selfy_cli.eval",
    "selfy_cli.export",
    "selfy_cli.predict",
    "selfy_cli.serve",
    "selfy_cli.tflite",
    "selfy_cli.tflite_inspect",
    "selfy_cli.demo_command",
    "selfy_cli.viz",
)


class _TqdmStream:
    """Writes log records through tqdm so they do not break progress bars."""

    def write(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message.rstrip("\n"), file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()


class _LevelPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname}: {message}"
        return message


def setup_logging(verbose: bool = False, log_file: str | None = None) -> None:
    """Configures the root logger once for a CLI run (library code never does)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(_TqdmStream())
    handler.setFormatter(_LevelPrefixFormatter("%(message)s"))
    root.addHandler(handler)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(file_handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # TensorFlow logs at INFO what only a developer reads, e.g. "Assets
    # written to: .../.tmp-..." for every SavedModel written by export,
    # tflite and demo.
    logging.getLogger("tensorflow").setLevel(logging.DEBUG if verbose else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfy",
        description=(
            "SELFY video action recognition in TensorFlow / Keras 3: convert "
            "datasets and weights, train, evaluate, export, serve, convert to "
            "TFLite."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"selfy-tf {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks for expected errors"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log at DEBUG level and show TensorFlow's and LiteRT's own messages"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register_subparser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `selfy` with `argv` (default: `sys.argv[1:]`); returns the exit status.

    Run as the `selfy` command (`argv` None), TensorFlow's start-up lines are
    kept off stderr unless `--verbose` is given.
    """
    if argv is None and "--verbose" not in sys.argv[1:]:
        from selfy_cli._quiet import quiet_tensorflow

        quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 0 if args.command is None else 2
    setup_logging(verbose=args.verbose)
    try:
        status = args.handler(args)
    except Exception as error:
        # Bad input, a bad record, a failing disk or network: one line;
        # --debug shows the traceback, and anything else keeps it.
        message = pipeline_check_message(error)
        if message is None and is_expected(error):
            message = error_line(error)
        if args.debug or message is None:
            raise
        print(f"selfy {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"selfy {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
