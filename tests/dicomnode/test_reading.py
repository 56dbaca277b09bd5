"""The node's associations read whole PDUs (dicomnode/reading.py): its socket over a real connection, and the node's
AE in this process receiving from dcmtk's storescu."""

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from dicomnode.reading import MADE_AT_MOST, WholeReadSocket, read_whole_pdus
from dicomnode.scp import application_entity
from tests.dicomnode.conftest import NODE_AE_TITLE, STORESCU
from tests.dicomnode.instances import data_set_of, full_size_dx, write
from tests.processes import free_port


@pytest.fixture
def connection() -> Iterator[tuple[WholeReadSocket, socket.socket]]:
    """A WholeReadSocket of an acceptor association, and the peer's end of its connection."""
    ours, peer = socket.socketpair()
    reading = WholeReadSocket(Association(AE(), "acceptor"), client_socket=ours)
    yield reading, peer
    peer.close()
    ours.close()


@pytest.fixture
def chunked_store_config() -> Iterator[None]:
    """application_entity sets pynetdicom's STORE_RECV_CHUNKED_DATASET for the process: put back after the test."""
    before = _config.STORE_RECV_CHUNKED_DATASET
    yield
    _config.STORE_RECV_CHUNKED_DATASET = before


def test_a_read_longer_than_its_first_buffer_returns_every_byte_in_order(
        connection: tuple[WholeReadSocket, socket.socket]):
    reading, peer = connection
    data = bytes(range(251)) * ((2 * MADE_AT_MOST + 12345) // 251)  # grows its buffer twice, sent in odd pieces
    sender = threading.Thread(target=lambda: [peer.sendall(data[start:start + 70_001])
                                              for start in range(0, len(data), 70_001)])
    sender.start()

    received = reading.recv(len(data))

    sender.join()
    assert received == data and isinstance(received, bytearray)


def test_a_peer_that_closes_mid_read_gives_what_it_sent(connection: tuple[WholeReadSocket, socket.socket]):
    reading, peer = connection

    def send_part_and_close() -> None:
        peer.sendall(b"x" * 300_000)
        peer.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_part_and_close)
    sender.start()

    received = reading.recv(1024 * 1024)

    sender.join()
    assert received == b"x" * 300_000  # as pynetdicom's own recv; the DUL then sees Evt17


def test_the_node_s_associations_read_whole_pdus_and_an_instance_arrives_bit_identical(
        tmp_path: Path, chunked_store_config: None):
    large = write(full_size_dx(study_uid=generate_uid(), rows=1500, columns=1200), tmp_path / "large.dcm")  # 3.6 MB
    received: dict[str, object] = {}

    def on_store(event: evt.Event) -> int:
        received["socket"] = type(event.assoc.dul.socket)
        received["file"] = Path(event.dataset_path).read_bytes()
        return 0x0000

    port = free_port()
    server = application_entity(NODE_AE_TITLE).start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_CONN_OPEN, read_whole_pdus),
                                                        (evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        sent = subprocess.run([STORESCU, "-aet", "MODALITY1", "-aec", NODE_AE_TITLE, "127.0.0.1", str(port),
                               str(large)], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()

    assert sent.returncode == 0, sent.stderr
    assert received["socket"] is WholeReadSocket and WholeReadSocket.__mro__[1] is AssociationSocket
    assert isinstance(received["file"], bytes) and data_set_of(received["file"]) == data_set_of(large.read_bytes())
