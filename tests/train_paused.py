"""``train/main.py`` whose rank 0, after its first checkpoint (written, pointed at, logs uploaded), creates
``$PAUSE_UNTIL_FILE.held`` and waits until file ``$PAUSE_UNTIL_FILE`` exists (at most 120 s).

For fault tests: the test waits for the ``.held`` file, kills a node while rank 0 is held here, then creates
the file: the run is interrupted right after that checkpoint, every time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train.loop as loop  # noqa: E402
from train.main import main  # noqa: E402

_checkpoint = loop._checkpoint
_held: list[str] = []


def _held_checkpoint(**kwargs):  # noqa: ANN003, ANN202 - same signature as loop._checkpoint
    url = _checkpoint(**kwargs)
    release = os.environ.get("PAUSE_UNTIL_FILE")
    if release and url is not None and not _held:  # rank 0, first checkpoint
        _held.append(url)
        Path(release + ".held").write_text(url, encoding="utf-8")
        deadline = time.monotonic() + 120
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)
    return url


loop._checkpoint = _held_checkpoint

if __name__ == "__main__":
    sys.exit(main())
