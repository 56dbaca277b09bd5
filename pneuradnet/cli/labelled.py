"""Where `evaluate` finds images and their true labels: subfolders named after the labels, or a labels file.

Both are read before the model loads, so a wrong layout or a wrong file is said at once.
"""

import csv
from pathlib import Path

from pneuradnet.cli.common import IMAGE_SUFFIXES, UsageError, images_under
from pneuradnet.manifest import ModelManifest

LABELS_FILE_COLUMNS = ("file", "label")
"""The header a labels file must have: the image's path relative to the folder, and its true label."""

PROBLEMS_SHOWN = 3
"""Wrong lines of a labels file named in the error; the others are counted."""

Labelled = list[tuple[Path, str]]
"""(image file, true label) pairs, in the order they are scored."""


def labelled_by_subfolder(folder: Path, manifest: ModelManifest) -> Labelled:
    """(image, true label) pairs from `folder`'s subfolders, each named after a label in any case."""
    _check_folder(folder)
    by_name = _labels_by_name(manifest)
    expected = ", ".join(manifest.labels)
    subfolders = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    unknown = [entry.name for entry in subfolders if entry.name.casefold() not in by_name]
    if unknown:
        raise UsageError(
            f"{folder} has subfolders not named after a label of model {manifest.name!r}: {', '.join(unknown)}; "
            f"name each subfolder after one of its labels (in any case): {expected}, or give a labels file "
            "with --labels"
        )
    labelled = [(path, by_name[entry.name.casefold()]) for entry in subfolders for path in images_under(entry)]
    if not labelled:
        raise UsageError(f"no {'/'.join(IMAGE_SUFFIXES)} files in subfolders of {folder} named after labels "
                         f"{expected}; for a flat folder, give a labels file with --labels")
    return labelled


def labelled_by_file(folder: Path, labels_file: Path, manifest: ModelManifest) -> Labelled:
    """(image, true label) pairs from a CSV file with the header `file,label`: each line names an image by its path
    relative to `folder` and its label (in any case), in the file's order. Images of the folder the file does not
    name are not scored. Every wrong line is an error: a missing image, an unknown label, an image named twice."""
    _check_folder(folder)
    rows = _read_labels_file(labels_file)
    by_name = _labels_by_name(manifest)
    labelled: Labelled = []
    problems: list[str] = []
    seen: dict[Path, int] = {}
    for line, (name, label) in rows:
        path = folder / name
        if not name or not path.is_file():
            problems.append(f"line {line}: no file {name!r} in {folder}")
        elif label.casefold() not in by_name:
            problems.append(f"line {line}: {label!r} is not a label of model {manifest.name!r} "
                            f"({', '.join(manifest.labels)})")
        elif path in seen:
            problems.append(f"line {line}: {name!r} is already labelled on line {seen[path]}")
        else:
            seen[path] = line
            labelled.append((path, by_name[label.casefold()]))
    if problems:
        more = len(problems) - PROBLEMS_SHOWN
        raise UsageError(f"labels file {labels_file}: {'; '.join(problems[:PROBLEMS_SHOWN])}"
                         + (f"; and {more} more wrong lines" if more > 0 else ""))
    if not labelled:
        raise UsageError(f"labels file {labels_file} names no image")
    return labelled


def _read_labels_file(labels_file: Path) -> list[tuple[int, tuple[str, str]]]:
    """(line number, (file, label)) of each record; `utf-8-sig`, as spreadsheets save CSV with a byte-order mark."""
    try:
        with labels_file.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            found = reader.fieldnames or []
            header = [column.strip().casefold() for column in found]
            if not set(LABELS_FILE_COLUMNS) <= set(header):
                raise UsageError(f"labels file {labels_file} must start with the header "
                                 f"{','.join(LABELS_FILE_COLUMNS)}, not {','.join(found) or 'nothing'}")
            reader.fieldnames = header
            return [(reader.line_num, ((row["file"] or "").strip(), (row["label"] or "").strip()))
                    for row in reader if any(value.strip() for value in row.values() if isinstance(value, str))]
    except OSError as error:
        raise UsageError(f"cannot read the labels file {labels_file}: {error.strerror or error}") from error
    except (UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"labels file {labels_file} is not a UTF-8 CSV file: {error}") from error


def _labels_by_name(manifest: ModelManifest) -> dict[str, str]:
    return {label.casefold(): label for label in manifest.labels}


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
