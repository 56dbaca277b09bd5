"""Fault points for tests and the fault campaign (bench/chaos/): off unless the process's environment names them.
Neither is a knob for operators, so neither is a setting nor in the README's table.

- PNEURADNET_FAULT names a point where the process ends, exactly there, at once (`fault_point`).
- PNEURADNET_FAULT_FILE names a file that a campaign writes while the process runs; each line of it names a fault
  in force now (`injected`), so that faults come and go at random moments without restarting anything.
"""

import os
from pathlib import Path

FAULT_ENV = "PNEURADNET_FAULT"
FAULT_FILE_ENV = "PNEURADNET_FAULT_FILE"

DIED_EXIT_CODE = 70
"""How a process ended at a fault point exits, so that a test can tell it from a crash."""

BROKER_SEND_FAILS = "broker-send-fails"
"""Every task sent to the broker fails as if the broker refused it (service/queue.py)."""


def fault_point(name: str) -> None:
    """End the process here, at once and without cleaning up, if the environment names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os._exit(DIED_EXIT_CODE)


def injected(name: str) -> bool:
    """Whether the fault file, if this process has one, names this fault now."""
    path = os.environ.get(FAULT_FILE_ENV)
    if not path:
        return False
    try:
        return name in Path(path).read_text().split()
    except OSError:
        return False
