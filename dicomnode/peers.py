"""Which peers may associate with the node: DICOM_ALLOWED_PEERS, comma-separated `AET` (that calling AE title from
any host) or `AET@host` (from that host only: an IP address, or a name resolved once, at start-up)."""

import ipaddress
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    ae_title: str
    addresses: frozenset[str] | None
    """The IP addresses it may call from; None: any."""


class PeerAllowList:
    """Empty: every peer is allowed."""

    def __init__(self, peers: tuple[Peer, ...]) -> None:
        self.peers = peers

    @classmethod
    def parse(cls, text: str) -> "PeerAllowList":
        """ValueError, naming the entry, for an empty AE title, one over 16 characters, or a host that does not
        resolve."""
        return cls(tuple(_peer(entry.strip()) for entry in text.split(",") if entry.strip()))

    @property
    def open(self) -> bool:
        return not self.peers

    def allows(self, ae_title: str, address: str) -> bool:
        return self.open or any(peer.ae_title == ae_title.strip() and
                                (peer.addresses is None or address in peer.addresses) for peer in self.peers)


def _peer(entry: str) -> Peer:
    ae_title, _, host = entry.partition("@")
    ae_title = ae_title.strip()
    if not 0 < len(ae_title) <= 16 or "\\" in ae_title:
        raise ValueError(f"DICOM_ALLOWED_PEERS entry {entry!r}: an AE title is 1 to 16 characters, no backslash")
    if not host:
        return Peer(ae_title, None)
    return Peer(ae_title, frozenset(_addresses(host.strip(), entry)))


def _addresses(host: str, entry: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(host.strip("[]")))}
    except ValueError:
        pass
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError as error:
        raise ValueError(f"DICOM_ALLOWED_PEERS entry {entry!r}: host {host!r} does not resolve ({error})") from error
