"""The two kinds of failure veripo tells apart (docs/reliability.md).

- ``UserError``: something the user can fix (a bad config value, a data file, a run directory in the wrong
  state). Its message names the file, record and field. The ``veripo`` command prints it in one or two lines
  and exits with code 2; no traceback.
- ``UnusableSample``: one item a run cannot use (undecodable media, a prompt over the token limit). Runs skip
  it, log the item and the reason and count it; a run stops only past ``data_max_bad_share`` of such items.

Anything else reaching the command is a bug: a traceback and where to report it, exit code 1.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix; the message says what and where (file, record, field)."""


class UnusableSample(UserError):
    """One sample a run cannot use; training and evaluation skip it and count it."""


class RunStateError(UserError):
    """A run directory that cannot be resumed as it is (not a run, a corrupt state, deleted checkpoints,
    a config edited since the run started)."""


class LaunchError(UserError, ValueError):
    """A launch veripo cannot honour as asked (the launcher's environment, e.g. an accelerate config, against
    the run's ``distributed`` and ``model`` settings): refused before any model loads."""


class Stopped(Exception):
    """A training stage stopped on SIGTERM after saving a checkpoint; ``veripo run --resume`` continues it.
    The command exits with ``exit_code`` (128 + SIGTERM, what a killed job reports)."""

    exit_code = 143
