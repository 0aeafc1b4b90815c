"""Keeps TensorFlow's and LiteRT's native chatter off the `selfy` command's stderr.

TensorFlow's C++ core logs a few lines on every CPU-only start (oneDNN
notices, the missing CUDA driver, the failed `cuInit`) before its logging is
initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot silence them; oneDNN repeats
its notice when a kernel falls back (`selfy viz`), and the LiteRT
interpreter announces its XNNPACK delegate (`selfy tflite`). They are
written straight to file descriptor 2, below Python. `StderrFilter` puts a
pipe in place of descriptor 2 and copies everything else through to the real
stderr from a forked child process; `selfy --verbose` leaves stderr alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import sys
import time

# Whole lines dropped as they are.
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_XNNPACK_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_LITERAL_NOISE = (_ABSL_PREAMBLE, _XNNPACK_NOTICE)
# Whole lines dropped: the literal ones, and TensorFlow's notices on a CPU machine.
NOISE = re.compile(
    rb"^(?:" + rb"|".join(re.escape(line) for line in _LITERAL_NOISE) + rb")$"
    rb"|^[IWE]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (?:"
    rb"oneDNN custom operations are on"
    rb"|Could not find cuda drivers"
    rb"|failed call to cuInit"
    rb"|oneDNN supports DT_\w+ only on platforms with AVX-512"
    rb")"
)
# A line start that may still become a dropped line: held until its newline.
_MAYBE_NOISE = re.compile(rb"^[IWE](?:\d{0,4}$|\d{4} )")

# Python-side TensorFlow warning that repeats itself (the tf.function
# retracing notice) and says nothing a user of the command can act on.
_RETRACING = "triggered tf.function retracing"


class _DropRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _RETRACING not in record.getMessage()


class _TerminalStderr:
    """`sys.stderr` of a terminal once descriptor 2 is the filter's pipe: it
    still says it is a terminal, so progress bars keep showing there."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class StderrFilter:
    """Copies file descriptor 2 to the real stderr, less the lines matching `pattern`.

    The copying runs in a child process forked by `start`, not in a thread:
    native code that holds Python's GIL while it writes more than a pipe's
    buffer to stderr (the TFLite converter's diagnostics of a failed
    conversion run to hundreds of KB) would wait forever for a thread that
    needs the GIL to drain the pipe. Start it before other threads exist.
    """

    def __init__(self, pattern: re.Pattern = NOISE) -> None:
        self.pattern = pattern
        self._saved_fd: int | None = None
        self._read_fd: int | None = None
        self._child: int | None = None
        self._stopped = False

    def start(self) -> None:
        sys.stderr.flush()
        is_terminal = os.isatty(2)
        read_fd, write_fd = os.pipe()
        child = os.fork()
        if child == 0:
            self._run_child(read_fd, write_fd)
        os.close(read_fd)
        self._child = child
        self._saved_fd = os.dup(2)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        if is_terminal:
            sys.stderr = _TerminalStderr(sys.stderr)
        atexit.register(self.stop)

    def _run_child(self, read_fd: int, write_fd: int) -> None:
        """The child: copies the pipe to its descriptor 2 until every writer is gone."""
        status = 0
        try:
            # It ends with the pipe, after the last line the parent (or its
            # children) wrote; a Ctrl-C or kill of the process group must
            # not cut that output short.
            for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(number, signal.SIG_IGN)
            os.close(write_fd)
            # Hold no other descriptor of the parent (its stdout pipe, files).
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.closerange(3, read_fd)
            os.closerange(read_fd + 1, 1 << 16)
            self._read_fd, self._saved_fd = read_fd, 2
            self._pump()
        except BaseException:  # noqa: BLE001 - the child must never return
            status = 1
        finally:
            os._exit(status)

    def _could_be_noise(self, fragment: bytes) -> bool:
        return bool(_MAYBE_NOISE.match(fragment)) or any(line.startswith(fragment) for line in _LITERAL_NOISE)

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._saved_fd, data):]

    def _pump(self) -> None:
        pending = b""
        while True:
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
        """Puts the real stderr back and gives the child 2 s to copy what is left."""
        if self._saved_fd is None or self._stopped:
            return
        self._stopped = True
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        # This process's write end closes here; the child ends once the pipe
        # is drained and no child of this process (conversion workers, the
        # resource tracker) holds it any more.
        os.dup2(self._saved_fd, 2)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if os.waitpid(self._child, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.01)


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
