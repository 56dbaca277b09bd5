"""Turning an upload (images, or ZIP archives of images) into the images of a batch, within the limits, one by one.

FastAPI has spooled the body before the route runs (each file past 1 MiB on disk). A request is first *planned*
from what is cheap to read, each file's size and first bytes and each archive's central directory (its entry count
and size first, from its end record: api/zipdirectory.py), and refused whole, before any job exists, if it breaks a
limit: too many images, too many bytes sent or unzipped, a ZIP that cannot be read, that lists more entries than the
request can need, or that would expand like a bomb. Its images are then *read* one at a time, so the API never holds
an archive and its contents at once, nor all the contents: the caller stores them a chunk at a time. A member that
turns out unreadable (a CRC that does not match, a size its directory lied about) fails its own job.

Nothing is extracted to disk: a member's name is only a label, and a path-traversal name cannot escape anywhere.
"""

import hashlib
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

from fastapi import UploadFile

from api.problems import ProblemError
from api.zipdirectory import read_directory_end
from service.jobstore import Upload
from service.problems import problem

ZIP_MAGIC = b"PK\x03\x04"

MAX_ZIP_RATIO = 200
"""Largest uncompressed/compressed ratio of a ZIP member; radiographs compress far less, bombs far more."""

ZIP_ENTRIES_PER_IMAGE = 2
"""Entries a ZIP may list per image the request can still take: the image, and the `__MACOSX/._name` beside it."""

ZIP_EXTRA_ENTRIES = 256
"""Entries a ZIP may list on top of those: its folders, and hidden files such as `.DS_Store` (all skipped)."""

ZIP_DIRECTORY_BYTES_PER_ENTRY = 1024
"""Central directory bytes a ZIP may use per entry it may list: 46 fixed, a 255-character UTF-8 path (765 at most)
and extra fields (times, ZIP64 sizes: under 100), so that names of any length a file system takes fit."""

_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError, ValueError,
               zlib.error)
"""What zipfile raises for an archive or member it cannot read: a bad CRC or directory (BadZipFile), an unknown
compression (NotImplementedError), encryption (RuntimeError), a cut or corrupt deflate stream (EOFError, zlib)."""


@dataclass(frozen=True)
class PlannedImage:
    """One image of the request, not read yet."""

    filename: str
    digest: bytes
    """What identifies its content for an Idempotency-Key: an archive member's size and CRC-32 (from the central
    directory, so nothing is decompressed to compare), a loose file's SHA-256."""
    read: Callable[[], Upload]
    size: int
    """Its bytes (as its archive's directory declares them): what it takes in Redis if kept there."""


@dataclass
class UploadPlan:
    images: list[PlannedImage]
    _archives: list[zipfile.ZipFile] = field(default_factory=list)

    def fingerprint(self, *, explain: bool) -> str:
        """The same files (names and contents) and the same `explain` give the same fingerprint."""
        digest = hashlib.sha256(b"pneuradnet-upload-v2")
        for image in self.images:
            for part in (image.filename.encode(), image.digest):
                digest.update(len(part).to_bytes(8, "big"))
                digest.update(part)
        if explain:
            digest.update(b"explain")
        return digest.hexdigest()

    def read(self) -> Iterator[Upload]:
        """The images, in upload order, read one by one."""
        for image in self.images:
            yield image.read()

    def close(self) -> None:
        for archive in self._archives:
            archive.close()


def plan_uploads(files: list[UploadFile], *, max_bytes: int, max_unzipped_bytes: int, max_files: int) -> UploadPlan:
    """The images of a request: loose files, and the members of ZIP archives, checked against the limits.

    `max_bytes` bounds what the client sent (files and archives as uploaded); `max_unzipped_bytes` bounds, apart,
    what the request's archives expand to, so an archive counts once against each limit, never twice against one.
    Blocking (it reads the spooled files): call it in a thread.
    """
    plan = UploadPlan(images=[])
    sent = 0
    unzipped = 0
    try:
        for file in files:
            size = file.file.seek(0, 2)
            file.file.seek(0)
            sent += size
            if sent > max_bytes:
                raise _too_large(max_bytes)
            name = _clean_name(file.filename or "upload")
            if file.file.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
                archive = _open_archive(file.file, name, room=max_files - len(plan.images), max_files=max_files)
                plan._archives.append(archive)
                members = [info for info in archive.infolist() if _is_image_candidate(info)]
                unzipped += sum(info.file_size for info in members)
                _check_members(members, archive=name, unzipped=unzipped, max_unzipped_bytes=max_unzipped_bytes)
                plan.images += [PlannedImage(_clean_name(info.filename), _member_digest(info),
                                             _member_reader(archive, info, name), info.file_size) for info in members]
            else:
                plan.images.append(_loose(file.file, name))
            if len(plan.images) > max_files:
                raise _too_many(max_files)
        if not plan.images:
            raise ProblemError(422, "no-files", "no images were uploaded: send them in the multipart field `files`")
    except BaseException:
        plan.close()
        raise
    return plan


def _loose(spooled: IO[bytes], name: str) -> PlannedImage:
    spooled.seek(0)
    digest = hashlib.sha256()
    size = 0
    while block := spooled.read(1 << 20):
        digest.update(block)
        size += len(block)

    def read() -> Upload:
        spooled.seek(0)
        return Upload(filename=name, data=spooled.read())

    return PlannedImage(name, digest.digest(), read, size)


def _open_archive(spooled: IO[bytes], name: str, *, room: int, max_files: int) -> zipfile.ZipFile:
    """The archive, its directory parsed; refused first, from its end record, if its directory lists more entries
    (or bytes) than `room` more images of the request can need: zipfile builds the whole directory before anything
    can be counted."""
    entries = ZIP_ENTRIES_PER_IMAGE * room + ZIP_EXTRA_ENTRIES
    try:
        end = read_directory_end(spooled)
        if end.entries > entries:
            raise _too_many_entries(name, f"lists {end.entries:,} entries (files and folders)",
                                    f"the {entries:,} entries", max_files)
        if end.size > entries * ZIP_DIRECTORY_BYTES_PER_ENTRY:
            raise _too_many_entries(name, f"has a central directory of {end.size:,} bytes",
                                    f"the {entries * ZIP_DIRECTORY_BYTES_PER_ENTRY:,} bytes of directory", max_files)
        spooled.seek(0)
        archive = zipfile.ZipFile(spooled)
    except _ZIP_ERRORS as error:
        raise ProblemError(422, "invalid-zip", f"{name} is not a readable ZIP archive ({error})") from error
    # zipfile reads as many bytes of directory as the end record says, whatever count it states.
    if len(archive.infolist()) > entries:
        archive.close()
        raise _too_many_entries(name, f"lists {len(archive.infolist()):,} entries (files and folders)",
                                f"the {entries:,} entries", max_files)
    return archive


def _check_members(members: list[zipfile.ZipInfo], *, archive: str, unzipped: int, max_unzipped_bytes: int) -> None:
    if unzipped > max_unzipped_bytes:
        raise ProblemError(413, "upload-too-large", f"the images in {archive} (with the request's other archives) "
                           f"expand to more than the limit of {max_unzipped_bytes:,} bytes (MAX_UNZIPPED_BYTES); "
                           "split them into several requests")
    for info in members:
        if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
            raise ProblemError(422, "zip-bomb", f"{archive}: member {info.filename!r} expands "
                               f"{info.file_size / info.compress_size:.0f}-fold; refused as a ZIP bomb")


def _member_digest(info: zipfile.ZipInfo) -> bytes:
    return info.file_size.to_bytes(8, "big") + info.CRC.to_bytes(4, "big")


def _member_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_name: str) -> Callable[[], Upload]:
    name = _clean_name(info.filename)

    def read() -> Upload:
        try:
            # The directory's sizes may lie: read no more than it declares, whatever the member holds.
            with archive.open(info) as member:
                data = member.read(info.file_size + 1)
        except _ZIP_ERRORS as error:
            return _unreadable(name, f"member {info.filename!r} of {archive_name} cannot be read ({error})")
        if len(data) != info.file_size:
            return _unreadable(name, f"member {info.filename!r} of {archive_name} is not the size its archive "
                                     "declares")
        return Upload(filename=name, data=data)

    return read


def _unreadable(name: str, detail: str) -> Upload:
    return Upload(filename=name, data=b"", error=problem("invalid-zip-member", "Invalid ZIP member", 422, detail))


def _is_image_candidate(info: zipfile.ZipInfo) -> bool:
    path = PurePosixPath(info.filename)
    hidden = any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX" for part in path.parts)
    return not info.is_dir() and not hidden


def _clean_name(name: str) -> str:
    """A display name without directory escapes: `../../x.png` -> `x.png`, `a/./b.png` -> `a/b.png`."""
    parts = [part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("", ".", "..", "/")]
    return "/".join(parts)[-255:] or "upload"


def _too_large(max_bytes: int) -> ProblemError:
    return ProblemError(413, "upload-too-large", f"the upload is larger than the limit of {max_bytes:,} bytes "
                        "(MAX_UPLOAD_BYTES); split it into several requests")


def _too_many_entries(archive: str, found: str, allowed: str, max_files: int) -> ProblemError:
    return ProblemError(413, "too-many-files", f"{archive} {found}, more than {allowed} allowed in a request of at "
                        f"most {max_files} images (MAX_FILES_PER_REQUEST); split them into several requests")


def _too_many(max_files: int) -> ProblemError:
    return ProblemError(413, "too-many-files", f"more than {max_files} images in one request "
                        "(MAX_FILES_PER_REQUEST); split them into several requests")

