"""Turning an upload (images, or ZIP archives of images) into named byte strings, within the limits.

Nothing is written to disk here: archives are read in memory, so a member's name is only a label and a
path-traversal name cannot escape anywhere.
"""

import io
import zipfile
from pathlib import PurePosixPath

from fastapi import UploadFile

from api.problems import ProblemError
from service.jobstore import Upload

ZIP_MAGIC = b"PK\x03\x04"

MAX_ZIP_RATIO = 200
"""Largest uncompressed/compressed ratio of a ZIP member; radiographs compress far less, bombs far more."""


async def read_uploads(files: list[UploadFile], *, max_bytes: int, max_unzipped_bytes: int,
                       max_files: int) -> list[Upload]:
    """The images of a request: loose files, and the members of ZIP archives.

    `max_bytes` bounds what the client sent (files and archives as uploaded); `max_unzipped_bytes` bounds, apart,
    what the request's archives expand to, so an archive counts once against each limit, never twice against one.
    """
    uploads: list[Upload] = []
    sent = 0
    unzipped_budget = max_unzipped_bytes
    for file in files:
        data = await file.read()
        sent += len(data)
        if sent > max_bytes:
            raise _too_large(max_bytes)
        name = _clean_name(file.filename or "upload")
        if data.startswith(ZIP_MAGIC):
            members = _unzip(data, archive=name, max_bytes=unzipped_budget, max_files=max_files - len(uploads))
            unzipped_budget -= sum(len(member.data) for member in members)
            uploads.extend(members)
        else:
            uploads.append(Upload(filename=name, data=data))
        if len(uploads) > max_files:
            raise _too_many(max_files)
    if not uploads:
        raise ProblemError(422, "no-files", "no images were uploaded: send them in the multipart field `files`")
    return uploads


def _unzip(data: bytes, *, archive: str, max_bytes: int, max_files: int) -> list[Upload]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zip_file:
            members = [info for info in zip_file.infolist() if _is_image_candidate(info)]
            if len(members) > max_files:
                raise _too_many(max_files)
            if sum(info.file_size for info in members) > max_bytes:
                raise ProblemError(413, "upload-too-large", f"the images in {archive} (with the request's other "
                                   "archives) expand to more than the limit of "
                                   f"{max_bytes:,} bytes (MAX_UNZIPPED_BYTES); split them into several requests")
            for info in members:
                if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
                    raise ProblemError(422, "zip-bomb", f"{archive}: member {info.filename!r} expands "
                                       f"{info.file_size / info.compress_size:.0f}-fold; refused as a ZIP bomb")
            return [Upload(filename=_clean_name(info.filename), data=_read_member(zip_file, info, max_bytes))
                    for info in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as error:
        raise ProblemError(422, "invalid-zip", f"{archive} is not a readable ZIP archive ({error})") from error


def _read_member(zip_file: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    # The sizes in the directory may lie: read no more than allowed, whatever they say.
    with zip_file.open(info) as member:
        data = member.read(max_bytes + 1)
    if len(data) > max_bytes or len(data) != info.file_size:
        raise ProblemError(422, "invalid-zip", f"member {info.filename!r} is not the size its archive declares")
    return data


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


def _too_many(max_files: int) -> ProblemError:
    return ProblemError(413, "too-many-files", f"more than {max_files} images in one request "
                        "(MAX_FILES_PER_REQUEST); split them into several requests")
