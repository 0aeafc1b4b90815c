"""Moved to `selfy_tf.sampling`: this import path is removed in `selfy_tf.compat.REMOVED_IN`."""

from selfy_tf.compat import alias_moved_module

alias_moved_module(__name__)
