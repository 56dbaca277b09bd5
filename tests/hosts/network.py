"""Other hosts on this machine: Linux network namespaces, each joined to the host by a veth pair on a /30 of its own,
and cut off without a word (iptables DROP inside the namespace, so that no reset or ICMP error tells anyone).

Needs root and Debian's iproute2 (`ip netns`) and iptables; scripts/install.sh --test installs them. Addresses are
taken from 10.213.0.0/16 only: traffic goes to loopback and to the namespaces made here, never anywhere else.
"""

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass

SUBNET = ipaddress.ip_network("10.213.0.0/16")
"""Where every veth pair takes its /30: the host side is its first address, the namespace side its second."""

NAME_PREFIX = "pnr"
"""Namespaces are named pnr-<pid of the pytest process>-<n>, so that leftovers of a dead run can be told apart."""

_numbers = itertools.count()
"""Numbers of this process's namespaces, never reused: a deleted namespace's veth lingers while the kernel frees it."""

_NAMESPACE_NAME = re.compile(rf"^{NAME_PREFIX}-(\d+)-(\d+)$")


def missing_tools() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (Debian: apt-get install iproute2 iptables, or scripts/install.sh --test)"
    return None


def run(*command: str) -> str:
    """Run a command of iproute2 or iptables; its error output is in the exception when it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Namespace:
    """A namespace with one veth pair to the host: `address` inside, `host_address` on the host side."""

    name: str
    host_interface: str
    interface: str
    host_address: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: the process's pid is the command's own)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def pids(self) -> list[int]:
        return [int(pid) for pid in run("ip", "netns", "pids", self.name).split()]

    def cut(self, *, port: int | None = None) -> None:
        """Drop silently every packet of the veth, both ways (with `port`: only TCP to and from that port of the
        host side, e.g. Redis's, so that the test still reaches a server inside)."""
        match = ["-p", "tcp", "--dport", str(port)] if port else []
        answer = ["-p", "tcp", "--sport", str(port)] if port else []
        self._iptables("-A", "OUTPUT", "-o", self.interface, "-d", self.host_address, *match, "-j", "DROP")
        self._iptables("-A", "INPUT", "-i", self.interface, "-s", self.host_address, *answer, "-j", "DROP")

    def heal(self) -> None:
        """Flush the namespace's rules: the veth carries traffic again."""
        self._iptables("-F")

    def _iptables(self, *rule: str) -> None:
        run(*self.command("iptables", "-w", *rule))


def _addresses_in_use() -> set[ipaddress.IPv4Address]:
    listing = run("ip", "-o", "-4", "addr", "show")
    return {ipaddress.ip_interface(found).ip for found in re.findall(r"inet (\S+)", listing)}


def _free_pair(start: int) -> ipaddress.IPv4Network:
    """A /30 of SUBNET that no interface of the host uses, searched from the `start`-th one."""
    pairs = list(SUBNET.subnets(new_prefix=30))
    in_use = _addresses_in_use()
    for offset in range(len(pairs)):
        pair = pairs[(start + offset) % len(pairs)]
        if not in_use.intersection(pair):
            return pair
    raise RuntimeError(f"every /30 of {SUBNET} is in use")


def create() -> Namespace:
    """A new namespace of this test process: made, its veth pair up and addressed, loopback up inside."""
    owner, number = os.getpid(), next(_numbers)
    pair = _free_pair(start=owner * 4 + number)
    host_address, address = (str(host) for host in list(pair.hosts())[:2])
    # Interface names have at most 15 characters: pnr<pid>h<n> fits any pid (at most 7 digits) and n < 1000.
    namespace = Namespace(name=f"{NAME_PREFIX}-{owner}-{number}", host_interface=f"{NAME_PREFIX}{owner}h{number}",
                          interface=f"{NAME_PREFIX}{owner}n{number}", host_address=host_address, address=address)
    run("ip", "netns", "add", namespace.name)
    try:
        run("ip", "link", "add", namespace.host_interface, "type", "veth", "peer", "name", namespace.interface)
        run("ip", "link", "set", namespace.interface, "netns", namespace.name)
        run("ip", "addr", "add", f"{host_address}/30", "dev", namespace.host_interface)
        run("ip", "link", "set", namespace.host_interface, "up")
        run("ip", "-n", namespace.name, "addr", "add", f"{address}/30", "dev", namespace.interface)
        run("ip", "-n", namespace.name, "link", "set", namespace.interface, "up")
        run("ip", "-n", namespace.name, "link", "set", "lo", "up")
    except Exception:
        remove(namespace.name)
        raise
    return namespace


def remove(name: str) -> None:
    """Kill what still runs inside, then delete the namespace; its veth pair goes with it (the host side too), once
    the kernel frees the namespace: a minute or two later if TCP connections cut off by a DROP are still closing."""
    for pid in run("ip", "netns", "pids", name).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    run("ip", "netns", "delete", name)


def remove_leftovers() -> list[str]:
    """Delete the namespaces of test processes that died without cleaning up (SIGKILL, a power cut); their names."""
    removed = []
    for line in run("ip", "netns", "list").splitlines():
        found = _NAMESPACE_NAME.match(line.split()[0]) if line.strip() else None
        if found and not _alive(int(found.group(1))):
            remove(found.group(0))
            removed.append(found.group(0))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
