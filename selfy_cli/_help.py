"""The one help formatter of every `selfy` command.

`argparse.ArgumentDefaultsHelpFormatter` appends `(default: X)` to every
option, which prints `(default: None)` for required options and options
without a default, and a second default where the help text already names
one. This formatter appends a default only where it tells the reader
something, and keeps descriptions as written (they hold usage examples).
"""

from __future__ import annotations

import argparse
import textwrap


def _meaningful_default(action: argparse.Action) -> bool:
    default = action.default
    if action.required or not action.option_strings or default is argparse.SUPPRESS:
        return False
    if default is None or default == [] or default == "":
        return False
    # A flag's default (False for `--json`) is its absence.
    if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
        return False
    return True


class HelpFormatter(argparse.HelpFormatter):
    """Shows `(default: X)` only for real defaults the help text does not already name.

    Descriptions are filled paragraph by paragraph; paragraphs whose lines
    are indented (command examples) are kept as written.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = textwrap.dedent(text).strip("\n").split("\n\n")
        filled = []
        for paragraph in paragraphs:
            if paragraph.startswith((" ", "\t")) or paragraph.lstrip().startswith(("-", "*")):
                filled.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                filled.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(filled) + "\n"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or "%(default)" in text or not _meaningful_default(action):
            return text
        return f"{text} (default: %(default)s)"


__all__ = ["HelpFormatter"]
