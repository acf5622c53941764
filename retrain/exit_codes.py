"""Exit codes of ``retrain build``, ``run`` and ``eval``: what a cron job can act on."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # done: a dataset written, a canary registered, or nothing new
    ERROR = 1  # failed; a rerun retries (nothing was used up)
    USAGE = 2  # bad arguments or config, or a preflight check failed: nothing was touched
    OVER_COST_CAP = 3  # the dataset's estimated training cost is over retrain.cost_cap
    BELOW_MINIMUM = 4  # fewer examples than retrain.min_examples: rate more
    BUSY = 5  # another build or run of the experiment holds its lock
    REJECTED = 6  # the candidate did not pass the evaluation gate: not registered
    COLLECT_MORE = 7  # too few held-out examples to evaluate a candidate: rate more
