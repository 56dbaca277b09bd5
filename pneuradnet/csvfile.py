"""The one CSV writer of the project: a row per image, a probability column per label of the model.

The service's batch export, `pneuradnet submit --out x.csv` and `pneuradnet predict --csv` all write through
`ResultTable`, so their columns agree and every cell is made safe in one place: file names are the user's words,
and a spreadsheet runs a cell that starts like a formula (CSV injection).
"""

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""How a cell starts that a spreadsheet may run as a formula (OWASP's list for CSV injection); such a text cell is
written with a `'` in front, which spreadsheets show as text. Numbers are written as they are: a probability is
never negative, and a number is not a formula."""


def neutralised(value: object) -> object:
    """The value as a CSV cell that no spreadsheet takes for a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_line(values: Iterable[object]) -> str:
    """One CSV record, every cell neutralised, without its line end."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([neutralised(value) for value in values])
    return buffer.getvalue()


def csv_text(lines: Iterable[str]) -> str:
    """Records from csv_line as a whole file."""
    return "".join(f"{line}\n" for line in lines)


def labels_of(results: Iterable[Mapping[str, Any] | None], model_labels: Sequence[str] = ()) -> list[str]:
    """The probability columns: the model's labels in their order, then any other label a result has (a result
    from another model than the one expected keeps its probabilities)."""
    seen = [label for result in results if result for label in result.get("labels", [])]
    return list(dict.fromkeys([*model_labels, *seen]))


@dataclass(frozen=True)
class ResultTable:
    """Columns filename, [status], predicted_class, confidence, a probability per label, error, [job_id]."""

    labels: Sequence[str]
    jobs: bool = True
    """With the columns of a job, status and job_id (the service's export, `submit`); without, `predict --csv`."""

    def header(self) -> str:
        job_status, job_id = (["status"], ["job_id"]) if self.jobs else ([], [])
        return csv_line(["filename", *job_status, "predicted_class", "confidence", *self.labels, "error", *job_id])

    def row(self, filename: str, result: Mapping[str, Any] | None, *, error: str = "", status: str = "",
            job_id: str = "") -> str:
        """One image: `result` is a job's result record (Prediction.to_dict), or None when it has none."""
        result = result or {}
        probabilities = dict(zip(result.get("labels", []), result.get("predictions", []), strict=True))
        job_status, job = ([status], [job_id]) if self.jobs else ([], [])
        return csv_line([filename, *job_status, result.get("predicted_class", ""), result.get("confidence", ""),
                         *(probabilities.get(label, "") for label in self.labels), error, *job])
