"""Fault points for tests: a process ends at a named point, exactly there, when the test that starts it asks.

Off unless PNEURADNET_FAULT names the point in the process's environment; no setting, nothing in the README's
table: it is not a knob for operators.
"""

import os

FAULT_ENV = "PNEURADNET_FAULT"

DIED_EXIT_CODE = 70
"""How a process ended at a fault point exits, so that a test can tell it from a crash."""


def fault_point(name: str) -> None:
    """End the process here, at once and without cleaning up, if the environment names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os._exit(DIED_EXIT_CODE)
