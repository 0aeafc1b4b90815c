"""The one-line message `selfy` prints for an expected failure.

`main()` catches the errors a user can cause or fix (bad values, missing
files, a full disk, a refused connection) and prints one line naming the
problem and the fix; `--debug` shows the traceback instead. Errors outside
these types are bugs and keep their traceback.
"""

from __future__ import annotations

import errno
import re
import sys

# Raised for bad input or a failing environment, not for bugs in selfy-tf.
# TypeError is not among them: command-line values reach the code parsed and
# checked, so a wrong type is a bug and keeps its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)

# errno -> (problem, fix) for disk failures whose default text names no fix.
_DISK_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "Free disk space or write to another disk."),
    errno.EDQUOT: ("disk quota exceeded", "Free space in your quota or write to another disk."),
    errno.EROFS: ("the file system is read-only", "Write to a writable folder."),
    errno.EACCES: ("permission denied", "Check the permissions or write to another folder."),
}


def _tensorflow_disk_full(error: BaseException) -> bool:
    # TensorFlow's own file writers (TFRecords, TensorBoard, checkpoints)
    # report ENOSPC as a RESOURCE_EXHAUSTED OpError, not an OSError.
    tensorflow = sys.modules.get("tensorflow")
    return (
        tensorflow is not None
        and isinstance(error, tensorflow.errors.OpError)
        and "no space left on device" in str(error).lower()
    )


def is_expected(error: BaseException) -> bool:
    """True for an error `selfy` reports in one line (bad input, a failing disk or network)."""
    return isinstance(error, EXPECTED_ERRORS) or _tensorflow_disk_full(error)


def error_line(error: BaseException) -> str:
    """`error` as one line naming the problem and, where known, the fix."""
    if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
        problem, fix = _DISK_ERRORS[error.errno]
        where = f" ({error.filename})" if error.filename else ""
        return f"{problem}{where}. {fix}"
    if _tensorflow_disk_full(error):
        problem, fix = _DISK_ERRORS[errno.ENOSPC]
        return f"{problem} ({error.message.strip().splitlines()[0]}). {fix}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def pipeline_check_message(error: BaseException) -> str | None:
    """The message of a failed check in a tf.data pipeline (bad record), or None.

    Input pipelines check records with `tf.debugging.Assert`; TensorFlow
    raises `InvalidArgumentError` wrapped in graph details, of which the
    user needs only the asserted text.
    """
    if type(error).__name__ != "InvalidArgumentError":
        return None
    match = re.search(r"assertion failed: \[(.*)\]\s*(?:\n|$)", str(error))
    return match.group(1) if match else None


__all__ = ["EXPECTED_ERRORS", "error_line", "is_expected", "pipeline_check_message"]
