"""Process-wide TensorFlow settings, read from the environment when TensorFlow starts.

The `selfy` command and the benchmarks call
`set_tensorflow_environment_defaults()` before importing TensorFlow. In your
own scripts, do the same (or export the variables in the shell):

    >>> from selfy_tf.runtime import set_tensorflow_environment_defaults
    >>> set_tensorflow_environment_defaults()  # before `import tensorflow`

A variable already set in the environment is left as it is, so
`TF_CPU_ALLOCATOR_USE_BFC=false selfy ...` restores TensorFlow's default.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

TENSORFLOW_ENVIRONMENT_DEFAULTS: dict[str, str] = {
    # TensorFlow's C++ INFO / WARNING lines are noise on a terminal.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # TensorFlow's default CPU allocator returns every large freed tensor to
    # the OS, so the next step page-faults the memory in again: on a virtual
    # machine that can cost more than the op that writes it. The BFC
    # allocator keeps freed memory for reuse, as on GPUs (figures:
    # benchmarks/README.md, "CPU memory allocator").
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
}


def set_tensorflow_environment_defaults() -> dict[str, str]:
    """Sets each variable of `TENSORFLOW_ENVIRONMENT_DEFAULTS` that is not set yet.

    Call it before TensorFlow is imported: TensorFlow reads these variables
    once, when it starts; afterwards they have no effect (a warning says so).

    Returns:
        The variables this call set, with their values.
    """
    added = {
        name: value
        for name, value in TENSORFLOW_ENVIRONMENT_DEFAULTS.items()
        if name not in os.environ
    }
    os.environ.update(added)
    if added and "tensorflow" in sys.modules:
        logger.warning(
            "TensorFlow was imported before selfy_tf.runtime set %s: they take "
            "effect only in processes that set them before importing TensorFlow.",
            ", ".join(sorted(added)),
        )
    return added
