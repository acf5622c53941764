"""One rank of a launched training (``retrain.local.processes`` above 1).

Started by ``accelerate launch ... -m retrain.train_worker SPEC.json`` (see
:func:`retrain.local_train.launch`): every rank trains; rank 0 alone appends its
reports (loss rows, checkpoints, the final summary) to ``events.jsonl`` in the run
directory and writes the adapter. A rank stops at its next step when the run directory
holds a ``stop`` file or the process that launched the training is gone (as seen from
its machine; with several machines the run directory is on a shared volume).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from gateway.core.locks import alive

from .config import LocalTraining
from .local_train import train_here


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    run_dir = Path(spec["run_dir"])
    events = run_dir / "events.jsonl"
    main_rank = int(os.environ.get("RANK", "0")) == 0

    here = socket.gethostname() == spec["parent_host"]

    def launcheralive() -> bool:  # seen from its own machine only
        return not here or alive(spec["parent_pid"])

    def emit(kind: str, **fields: Any) -> None:
        if main_rank:
            with open(events, "a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, **fields}) + "\n")

    summary = train_here(
        Path(spec["dataset"]),
        Path(spec["out"]),
        LocalTraining.model_validate(spec["cfg"]),
        base_model=spec["base_model"],
        checkpoint_dir=Path(spec["checkpoint_dir"]),
        on_log=lambda row: emit("log", row=row),
        on_checkpoint=lambda step: emit("checkpoint", step=step),
        should_stop=lambda: (run_dir / "stop").exists() or not launcheralive(),
    )
    emit("summary", summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
