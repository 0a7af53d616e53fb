"""The one base class of bad input: every check that refuses what a user wrote (a config field, a path, a data row,
a checkpoint, a preference) raises a subclass of ``InputError``, so a command line prints its message and exits
without a traceback (``rlhf/runtime/cli.py``) whatever module raised it."""
from __future__ import annotations


class InputError(Exception):
    """Bad input refused before (or instead of) compute; the message names the field, file or row and the fix."""
