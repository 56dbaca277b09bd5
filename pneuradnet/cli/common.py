"""What every `pneuradnet` command shares: exit statuses, failures in place of results, finding and reading image
files, and writing output beside a progress bar."""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import NoReturn, TextIO

from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""File name endings (in any case) picked up when a folder is searched; files named explicitly are always tried."""


class Exit(IntEnum):
    OK = 0  # every image classified (and, for `info`, the self-check passed)
    SOME_FAILED = 1  # some image could not be classified, or the self-check failed; the others were reported
    ERROR = 2  # nothing was done: a usage error or a library error (manifest, model file), as argparse's own
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UsageError(Exception):
    """The command line asks for something impossible, e.g. a folder laid out wrongly; reported like a library error."""


@dataclass(frozen=True)
class Failure:
    """An image that could not be classified, in the place of its Prediction."""

    filename: str
    error: str


def find_images(paths: Sequence[Path]) -> list[Path]:
    """Files named explicitly, in order, and the image files under each folder, sorted."""
    found: list[Path] = []
    for path in paths:
        found.extend(images_under(path) if path.is_dir() else [path])
    if not found:
        raise UsageError(f"no {'/'.join(IMAGE_SUFFIXES)} files in {', '.join(map(str, paths))}")
    return found


def images_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def read_file(path: Path) -> bytes | Failure:
    try:
        return path.read_bytes()
    except OSError as error:
        return Failure(str(path), f"cannot read the file: {error.strerror or error}")


def write_lines(lines: Sequence[str], *, stream: TextIO | None = None) -> None:
    """Print lines without tearing a progress bar that shares the terminal."""
    stream = stream or sys.stdout
    if lines:
        tqdm.write("\n".join(lines), file=stream)
        stream.flush()


def progress_bar(total: int, description: str | None = None, *, initial: int = 0) -> "tqdm[NoReturn]":
    return tqdm(total=total, initial=initial, desc=description, unit="image", file=sys.stderr, dynamic_ncols=True,
                disable=True if total < 2 else None)  # None: tqdm shows it on a terminal only


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
