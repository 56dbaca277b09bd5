"""How large a ZIP's central directory is, read from its end record before zipfile parses the directory.

`zipfile.ZipFile()` turns the whole central directory into ZipInfo objects (about 0.5 KB of memory each) before
anything can be counted: a 172 MB archive of 2,000,000 empty entries, within MAX_UPLOAD_BYTES, took the API to
2.3 GB and 46 s before its images were counted and refused. The end of central directory record (and the ZIP64
one that extends it) states the number of entries and the directory's size in a few dozen bytes at the end of the
file, so an archive too large for a request is refused from those.

The record is found as zipfile finds it, so that what is checked here is what zipfile then parses: the last 22
bytes if they are a record without a comment, else the last signature in the file's tail; a ZIP64 record is read
whenever a ZIP64 locator precedes the end record. zipfile reads as many bytes of directory as the record's size
says, whatever its entry count says, so it is the size that bounds its work; the count tells an honest archive's
size sooner and in words a user knows.
"""

import os
import struct
import zipfile
from dataclasses import dataclass
from typing import IO

END_RECORD = struct.Struct("<4s4H2LH")
"""The end of central directory record: signature, disk numbers (2), entries on this disk and in all, the
directory's size and offset, the comment's length; a comment of up to MAX_COMMENT bytes follows it."""

ZIP64_LOCATOR = struct.Struct("<4sLQL")
"""The ZIP64 end of central directory locator, just before the end record: signature, disk of the ZIP64 record,
its offset, number of disks."""

ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
"""The ZIP64 end of central directory record: signature, its size, versions (2), disk numbers (2), entries on
this disk and in all, the directory's size and offset (8 bytes each)."""

END_SIGNATURE = b"PK\x05\x06"
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
ZIP64_END_SIGNATURE = b"PK\x06\x06"

MAX_COMMENT = 0xFFFF
"""Longest archive comment (its length is a 2-byte field): the end record is within this many bytes, plus its own
22, of the end of the file."""


@dataclass(frozen=True)
class DirectoryEnd:
    """What an archive's end record says of its central directory."""

    entries: int
    """Entries in the directory (files and folders), as declared."""
    size: int
    """Bytes the directory takes, as declared: what zipfile reads and parses."""


def read_directory_end(file: IO[bytes]) -> DirectoryEnd:
    """The entry count and directory size an archive's end record declares (its ZIP64 record's, if it has one).

    Reads the last 64 KiB of the file, and a ZIP64 record. Raises zipfile.BadZipFile if no end record is found.
    """
    file_size = file.seek(0, os.SEEK_END)
    tail_start = max(file_size - END_RECORD.size - MAX_COMMENT, 0)
    file.seek(tail_start)
    tail = file.read()
    at = _end_record_position(tail)
    if at < 0:
        raise zipfile.BadZipFile("no end of central directory record: the file is not a ZIP archive, or is cut")
    _, _, _, _, entries, size, _, _ = END_RECORD.unpack_from(tail, at)
    return _with_zip64(file, tail_start + at, DirectoryEnd(entries=entries, size=size))


def _end_record_position(tail: bytes) -> int:
    """Where in the tail the end record is that zipfile would use, or -1."""
    last = len(tail) - END_RECORD.size
    if last >= 0 and tail[last:last + 4] == END_SIGNATURE and tail[-2:] == b"\0\0":
        return last  # no comment: the common case, and zipfile's first guess
    at = tail.rfind(END_SIGNATURE)
    return at if 0 <= at <= last else -1


def _with_zip64(file: IO[bytes], end_record: int, classic: DirectoryEnd) -> DirectoryEnd:
    """The figures zipfile parses by, if a ZIP64 locator precedes the end record at this offset; else `classic`.

    zipfile (3.11) reads the ZIP64 record just before the locator, and keeps the classic figures if none is there;
    later versions look first where the locator points. The larger figures of the two are kept, so that the answer
    bounds what either parses.
    """
    locator_at = end_record - ZIP64_LOCATOR.size
    if locator_at < 0:
        return classic
    file.seek(locator_at)
    signature, _, pointed_at, _ = ZIP64_LOCATOR.unpack(file.read(ZIP64_LOCATOR.size))
    if signature != ZIP64_LOCATOR_SIGNATURE:
        return classic
    last_at = locator_at - ZIP64_END_RECORD.size
    found = [_zip64_record(file, last_at, last_at=last_at) or classic]
    if pointed := _zip64_record(file, pointed_at, last_at=last_at):
        found.append(pointed)
    return DirectoryEnd(entries=max(end.entries for end in found), size=max(end.size for end in found))


def _zip64_record(file: IO[bytes], at: int, *, last_at: int) -> DirectoryEnd | None:
    """The ZIP64 end record at this offset, if there is one (it cannot start after `last_at`)."""
    if not 0 <= at <= last_at:
        return None
    file.seek(at)
    record = ZIP64_END_RECORD.unpack(file.read(ZIP64_END_RECORD.size))
    if record[0] != ZIP64_END_SIGNATURE:
        return None
    return DirectoryEnd(entries=record[7], size=record[8])
