"""Upload bodies reach the multipart parser in pieces of at least a MiB, whole and in order, however small the
pieces the server hands over."""

import os

from api.large_pieces import PIECE_BYTES, LargePieceRequest


def request_receiving(body: bytes, *, piece: int) -> LargePieceRequest:
    messages = [{"type": "http.request", "body": body[start:start + piece], "more_body": start + piece < len(body)}
                for start in range(0, len(body), piece)]

    async def receive() -> dict:
        return messages.pop(0)

    return LargePieceRequest({"type": "http", "method": "POST", "headers": []}, receive)


async def test_small_pieces_are_joined_into_pieces_of_a_mib_and_nothing_is_lost():
    body = os.urandom(5 * PIECE_BYTES + 12345)

    pieces = [piece async for piece in request_receiving(body, piece=64 * 1024).stream()]

    assert b"".join(pieces) == body
    *whole, last, end = pieces
    assert all(len(piece) >= PIECE_BYTES for piece in whole) and len(whole) == 5
    assert 0 < len(last) < PIECE_BYTES and end == b""


async def test_a_body_smaller_than_a_piece_arrives_whole():
    body = os.urandom(1000)

    assert [piece async for piece in request_receiving(body, piece=300).stream()] == [body, b""]
