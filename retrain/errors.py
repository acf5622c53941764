"""Why a ``retrain`` command stops: one hierarchy, each class carrying its exit code.

A problem is raised where it is found, as the class that says what a cron job can do
about it; the command line's entry (:func:`retrain.cli.main`) is the one place that
prints it (``retrain <command>: <message>`` on stderr, a line each) and exits with the
class's code (:class:`~retrain.exit_codes.ExitCode`)::

    RetrainError             1  failed; a rerun retries (nothing was used up)
    ├── UsageError           2  bad arguments or input: nothing was touched
    │   └── InvalidInput     2  a file given to the command cannot be used
    ├── NotFound             1  no such job or model
    ├── GatewayUnavailable   1  the gateway answered with an error, or not at all
    ├── UpstreamUnavailable  1  a model server (vLLM's tokenizer) answered with an error
    └── Busy                 5  another process holds the lock; a rerun finishes

The outcomes of ``build``, ``run``, ``eval`` and ``embed`` (below the minimum, over the
cost cap, rejected by the gate, collect more) are not errors: those commands return
their result, whose exit code comes from the same table.

A config file with mistakes stops every command before it starts, with exit 2 and one
line per mistake (``gateway.core.config.load_or_exit``, shared with ``gateway``).
"""

from __future__ import annotations

from .exit_codes import ExitCode


class RetrainError(Exception):
    """A command could not do its work; its message says why, for the operator."""

    exit_code: int = ExitCode.ERROR


class UsageError(RetrainError, ValueError):
    """Bad arguments or input, found before anything was changed (exit 2)."""

    exit_code = ExitCode.USAGE


class InvalidInput(UsageError):
    """A file given to the command (a golden set, triples, a corpus) cannot be used:
    unreadable, or a line that is not what the command reads; the message names it."""

    @classmethod
    def unreadable(cls, path: object, exc: OSError) -> InvalidInput:
        return cls(f"{path}: cannot read it: {exc.strerror or exc}")


class NotFound(RetrainError, LookupError):
    """No such job, model or adapter (exit 1)."""


class GatewayUnavailable(RetrainError, RuntimeError):
    """A call to the gateway failed: an error status, or no answer (exit 1; a rerun
    retries)."""


class UpstreamUnavailable(RetrainError, RuntimeError):
    """A model server the command asks directly (vLLM's ``/tokenize``) answered with an
    error (exit 1; a rerun retries)."""


class Busy(RetrainError):
    """Another process holds the lock this work needs (exit 5); nothing was half done,
    and a rerun finishes the work."""

    exit_code = ExitCode.BUSY
