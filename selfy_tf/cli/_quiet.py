"""Keeps TensorFlow's start-up chatter off the `selfy` command's stderr.

TensorFlow's C++ core logs a few lines on every CPU-only start (oneDNN
notices, the missing CUDA driver, the failed `cuInit`) before its logging is
initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot silence them. They are written
straight to file descriptor 2, below Python. `StderrFilter` puts a pipe in
place of descriptor 2 and copies everything else through to the real stderr
from a thread; `selfy --verbose` leaves stderr alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import select
import sys
import threading

# Whole lines dropped: TensorFlow's start-up notices on a CPU machine.
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
NOISE = re.compile(
    rb"^(?:" + re.escape(_ABSL_PREAMBLE) + rb"$"
    rb"|[IWE]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (?:"
    rb"oneDNN custom operations are on"
    rb"|Could not find cuda drivers"
    rb"|failed call to cuInit"
    rb"|oneDNN supports DT_UINT8 only on platforms with AVX-512"
    rb"))"
)
# A line start that may still become a dropped line: held until its newline.
_MAYBE_NOISE = re.compile(rb"^[IWE](?:\d{0,4}$|\d{4} )")

# Python-side TensorFlow warning that repeats itself (the tf.function
# retracing notice) and says nothing a user of the command can act on.
_RETRACING = "triggered tf.function retracing"


class _DropRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _RETRACING not in record.getMessage()


class StderrFilter:
    """Copies file descriptor 2 to the real stderr, less the lines matching `pattern`."""

    def __init__(self, pattern: re.Pattern = NOISE) -> None:
        self.pattern = pattern
        self._saved_fd: int | None = None
        self._read_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self._read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, name="selfy-stderr-filter", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _could_be_noise(self, fragment: bytes) -> bool:
        return bool(_MAYBE_NOISE.match(fragment)) or _ABSL_PREAMBLE.startswith(fragment)

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._saved_fd, data):]

    def _pump(self) -> None:
        pending = b""
        while True:
            # Child processes (conversion workers, the resource tracker) may
            # hold the pipe open after this process stops: once stopped, end
            # when the pipe is drained instead of waiting for its end.
            ready, _, _ = select.select([self._read_fd], [], [], 0.1)
            if not ready:
                if self._stopped:
                    break
                continue
            try:
                chunk = os.read(self._read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not self.pattern.match(line))
            # Progress bars redraw a line without ending it: pass such text on
            # at once unless it may be the start of a dropped line.
            if pending and not self._could_be_noise(pending):
                kept, pending = kept + pending, b""
            if kept:
                self._write(kept)
        if pending:
            self._write(pending)

    def stop(self) -> None:
        """Puts the real stderr back and copies what is left in the pipe."""
        if self._saved_fd is None or self._stopped:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved_fd, 2)
        # Everything this process wrote is in the pipe now: the thread copies
        # it, then stops at the first quiet 0.1 s.
        self._stopped = True
        if self._thread is not None:
            self._thread.join(timeout=2.0)


def drop_retracing_warnings() -> None:
    """Drops TensorFlow's tf.function retracing warnings (once per process)."""
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(item, _DropRetracing) for item in logger.filters):
        logger.addFilter(_DropRetracing())


def quiet_tensorflow() -> StderrFilter | None:
    """Filters TensorFlow's start-up lines from stderr (POSIX only); returns the filter."""
    drop_retracing_warnings()
    if os.name != "posix":
        return None
    stderr_filter = StderrFilter()
    stderr_filter.start()
    return stderr_filter
