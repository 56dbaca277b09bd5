"""A ZIP's end record gives the entry count and directory size zipfile then parses by: with a comment after it, in
ZIP64, and not at all in a file that is cut."""

import io
import struct
import zipfile

import pytest

from api.zipdirectory import (
    END_RECORD,
    END_SIGNATURE,
    MAX_COMMENT,
    ZIP64_END_RECORD,
    ZIP64_END_SIGNATURE,
    ZIP64_LOCATOR,
    ZIP64_LOCATOR_SIGNATURE,
    DirectoryEnd,
    read_directory_end,
)

SATURATED_END = END_RECORD.pack(END_SIGNATURE, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
"""A classic end record whose figures are all in its ZIP64 record."""


def archive(names: list[str], *, comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zip_file:
        for name in names:
            zip_file.writestr(zipfile.ZipInfo(name), b"")
        zip_file.comment = comment
    return buffer.getvalue()


def directory_size(data: bytes) -> int:
    """The central directory's bytes, counted entry by entry from what zipfile parsed."""
    with zipfile.ZipFile(io.BytesIO(data)) as zip_file:
        return sum(46 + len(info.filename.encode()) + len(info.extra) + len(info.comment)
                   for info in zip_file.infolist())


def read(data: bytes) -> DirectoryEnd:
    return read_directory_end(io.BytesIO(data))


def test_an_archive_states_its_entries_and_directory_size():
    data = archive(["study/", "study/a.png", "study/b.png"])

    assert read(data) == DirectoryEnd(entries=3, size=directory_size(data))


def test_the_end_record_is_found_behind_a_comment_of_the_longest_length():
    data = archive(["a.png", "b.png"], comment=b"x" * MAX_COMMENT)

    assert data.endswith(b"x" * MAX_COMMENT)
    assert read(data) == DirectoryEnd(entries=2, size=directory_size(data))


def test_a_zip64_archive_is_read_from_its_zip64_record():
    names = [f"{n}.png" for n in range(0x10000)]  # one past what the classic record's 2-byte count can hold
    data = archive(names)
    classic_count = END_RECORD.unpack_from(data, len(data) - END_RECORD.size)[4]

    end = read(data)

    assert classic_count == 0xFFFF  # saturated: only the ZIP64 record has the count
    assert end == DirectoryEnd(entries=0x10000, size=directory_size(data))


def zip64_end(*, entries: int, size: int) -> bytes:
    return ZIP64_END_RECORD.pack(ZIP64_END_SIGNATURE, ZIP64_END_RECORD.size - 12, 45, 45, 0, 0, entries, entries, size,
                                 0)


def locator(pointing_at: int) -> bytes:
    return ZIP64_LOCATOR.pack(ZIP64_LOCATOR_SIGNATURE, 0, pointing_at, 1)


@pytest.mark.parametrize(("pointed", "before", "expected"), [
    pytest.param((900, 90_000), (3, 150), (900, 90_000), id="the pointed-at record is larger"),
    pytest.param((3, 150), (900, 90_000), (900, 90_000), id="the record before the locator is larger"),
])
def test_of_two_zip64_records_the_larger_figures_count(pointed, before, expected):
    # zipfile 3.11 reads the record just before the locator, later versions first the one the locator points at:
    # an archive with both must not pass the check by one and be parsed by the other.
    data = (zip64_end(entries=pointed[0], size=pointed[1]) + bytes(10) + zip64_end(entries=before[0], size=before[1])
            + locator(pointing_at=0) + SATURATED_END)

    assert read(data) == DirectoryEnd(*expected)


def test_without_a_zip64_record_the_classic_figures_count():
    assert read(bytes(100) + locator(pointing_at=0) + SATURATED_END) == DirectoryEnd(0xFFFF, 0xFFFFFFFF)


def test_a_decoy_record_in_the_comment_is_read_as_zipfile_reads_it():
    # zipfile takes the last end-record signature in the file's tail: a record in the comment, claiming an empty
    # directory, hides the real one from zipfile too, so that both see the same (empty) directory.
    decoy = END_RECORD.pack(END_SIGNATURE, 0, 0, 0, 0, 0, 0, 0)
    data = archive(["a.png", "b.png"], comment=b"note " + decoy + b" end")

    with zipfile.ZipFile(io.BytesIO(data)) as zip_file:
        assert zip_file.infolist() == []
    assert read(data) == DirectoryEnd(entries=0, size=0)


@pytest.mark.parametrize("cut", [
    pytest.param(lambda data: data[:-10], id="end record cut"),
    pytest.param(lambda data: data[:60], id="only a local header"),
    pytest.param(lambda data: data[:3], id="three bytes"),
    pytest.param(lambda data: b"", id="empty"),
])
def test_a_file_without_an_end_record_is_not_a_zip(cut):
    with pytest.raises(zipfile.BadZipFile, match="no end of central directory record"):
        read(cut(archive(["a.png", "b.png"])))


def test_a_comment_of_another_length_than_declared_does_not_hide_the_record():
    data = archive(["a.png"], comment=b"signed")
    declared_longer = data[:-8] + struct.pack("<H", 200) + data[-6:]  # zipfile does not check the declared length

    with zipfile.ZipFile(io.BytesIO(declared_longer)) as zip_file:
        assert len(zip_file.infolist()) == 1
    assert read(declared_longer).entries == 1
