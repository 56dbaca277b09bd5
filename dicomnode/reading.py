"""How the node's associations read their peer's PDUs: as much as the kernel has at each read, into one buffer.

pynetdicom 3.0's AssociationSocket.recv reads 4096 bytes at a time and extends a bytearray with each: a 15 MB DX
instance is some 3,700 reads in a Python loop that holds the GIL, about 15% of the node's CPU. A WholeReadSocket
reads the length asked for into a buffer made at that length, each read (recv_into) taking whatever the kernel has
(up to the whole PDU): a 1 MiB PDU takes a handful of reads. It is pynetdicom's socket otherwise, and its recv
keeps that contract: the bytes asked for, or fewer if the peer closed the connection first; OSError and
TimeoutError go to the caller (pynetdicom's DUL, which answers them with Evt17) as they did.
"""

import socket
from typing import cast

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket

MADE_AT_MOST = 4 * 1024 * 1024
"""Bytes a read's buffer is made with at most. The length asked is the PDU's, as its header claims; past this, the
buffer grows as its bytes arrive, so that a peer announcing a 4 GB PDU does not make the node allocate it. Above
the node's MAX_PDU_SIZE (1 MiB, dicomnode/scp.py): every PDU a well-behaved peer sends is read into one buffer."""


class WholeReadSocket(AssociationSocket):
    """pynetdicom's association socket, reading the whole length asked at once (see the module's docstring)."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        received = bytearray(min(nr_bytes, MADE_AT_MOST))
        view = memoryview(received)
        filled = 0
        while filled < nr_bytes:
            if filled == len(received):  # a PDU longer than MADE_AT_MOST, still arriving: as much again
                view.release()  # a bytearray cannot change size while a view of it is held
                received.extend(bytes(min(nr_bytes - filled, len(received))))
                view = memoryview(received)
            read = sock.recv_into(view[filled:])
            if not read:  # the peer closed the connection: what came, as pynetdicom's recv returns it
                view.release()
                del received[filled:]
                return received
            filled += read
        view.release()
        return received


def read_whole_pdus(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: the association's socket reads as a WholeReadSocket.

    pynetdicom 3.0 makes an accepted association's AssociationSocket in RequestHandler._create_association, by name,
    with no way to choose its class, and makes a custom server class hand the server to private lists (its
    shutdown removes it from AE._servers). Making another socket would announce the connection to the state
    machine twice (the constructor queues Evt5). So the socket pynetdicom made is given the subclass, whose only
    change is recv. EVT_CONN_OPEN comes after the socket is made and before the association's thread reads from it.
    This relies on pynetdicom 3.0's AssociationSocket (its attributes, recv's contract with the DUL): pyproject.toml
    bounds pynetdicom to 3.0, and tests/dicomnode/test_reading.py checks that an association reads this way.
    """
    association_socket = event.assoc.dul.socket
    if type(association_socket) is AssociationSocket:  # a subclass of pynetdicom's own (TLS, tests) is left as is
        association_socket.__class__ = WholeReadSocket
