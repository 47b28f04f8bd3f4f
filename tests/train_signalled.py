"""``train/main.py`` whose rank ``$SIGNAL_RANK`` sends itself ``SIG$SIGNAL_NAME`` (TERM, INT, KILL) right after
step ``$SIGNAL_AFTER_STEP`` (the run's position is then that step), on torchrun's first attempt only
(``TORCHELASTIC_RESTART_COUNT`` 0). The exit status ``main`` returns is written to ``$EXIT_DIR/rank{r}.status``.

For fault tests: the signal arrives at the same step every time, on one rank only, so the others learn of
it through the trainer's per-step agreement (``train.stopping``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train.loop as loop  # noqa: E402
from train.main import main  # noqa: E402

_train_step = loop.train_step


def _signalled_step(**kwargs):  # noqa: ANN003, ANN202 - same signature as loop.train_step
    result = _train_step(**kwargs)
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_attempt and kwargs["runtime"].rank == int(os.environ["SIGNAL_RANK"]) \
            and kwargs["step"] + 1 == int(os.environ["SIGNAL_AFTER_STEP"]):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["SIGNAL_NAME"]))
    return result


loop.train_step = _signalled_step

if __name__ == "__main__":
    status = main()
    if os.environ.get("EXIT_DIR"):
        Path(os.environ["EXIT_DIR"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["EXIT_DIR"], f"rank{os.environ.get('RANK', '0')}.status").write_text(f"{status}\n")
    sys.exit(status)
