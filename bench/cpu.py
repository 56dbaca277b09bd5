"""CPU time of running processes and their descendants, read from /proc: where a benchmark's cores went.

A process's figure counts its threads and the descendants alive when it is read (a worker's pool processes, which
live as long as it does), short of the other processes named, which are counted apart (a benchmark started the
service's processes, which are not its own work); a descendant that exited between two readings is not counted.
"""

import os
from collections.abc import Mapping
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each named process with its descendants."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        pid = int(stat.parent.name)
        # Fields after the name, from the 3rd: state, ppid (4th), ..., utime (14th), stime (15th).
        parents[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND
    roots = set(pids.values())
    return {name: sum(used.get(member, 0.0) for member in _tree(root, parents, roots - {root}))
            for name, root in pids.items()}


def _tree(root: int, parents: Mapping[int, int], others: set[int]) -> set[int]:
    members = {root}
    grown = True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in members} - members - others
        members |= found
        grown = bool(found)
    return members
