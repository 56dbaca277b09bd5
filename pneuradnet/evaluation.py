"""Scoring predictions against known labels: accuracy, per-class precision/recall/F1, confusion matrix.

Pure functions over label strings; a score whose denominator is zero is None ("undefined"), not 0.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassScores:
    label: str
    precision: float | None
    """Of the images predicted as this label, the share that are; None if none was predicted as it."""
    recall: float | None
    """Of the images that are this label, the share predicted as it; None if none is."""
    f1: float | None
    """2·TP / (2·TP + FP + FN); None if the label appears neither as truth nor as prediction."""
    support: int
    """Images whose true label this is."""


@dataclass(frozen=True)
class Evaluation:
    labels: tuple[str, ...]
    accuracy: float
    correct: int
    total: int
    classes: tuple[ClassScores, ...]
    confusion: tuple[tuple[int, ...], ...]
    """confusion[i][j]: images of true label i predicted as label j, in `labels` order."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "classes": [asdict(scores) for scores in self.classes],
            "confusion": [list(row) for row in self.confusion],
        }


def confusion_matrix(true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts of shape (len(labels), len(labels)): rows are true labels, columns predicted ones."""
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predicted ones")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {list(labels)}")
    index = {label: position for position, label in enumerate(labels)}
    unknown = sorted({label for label in (*true, *predicted) if label not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among {list(labels)}")
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for actual, guess in zip(true, predicted, strict=True):
        matrix[index[actual], index[guess]] += 1
    return matrix


def evaluate(true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> Evaluation:
    """Score `predicted` against `true`, both label strings in the same image order."""
    if not true:
        raise ValueError("nothing to evaluate: no labelled predictions")
    matrix = confusion_matrix(true, predicted, labels)
    correct = int(np.trace(matrix))
    total = int(matrix.sum())
    classes = []
    for position, label in enumerate(labels):
        hits = int(matrix[position, position])
        predicted_as = int(matrix[:, position].sum())
        support = int(matrix[position, :].sum())
        classes.append(ClassScores(
            label=label,
            precision=_ratio(hits, predicted_as),
            recall=_ratio(hits, support),
            f1=_ratio(2 * hits, predicted_as + support),  # 2·TP + FP + FN == predicted_as + support
            support=support,
        ))
    return Evaluation(
        labels=tuple(labels),
        accuracy=correct / total,
        correct=correct,
        total=total,
        classes=tuple(classes),
        confusion=tuple(tuple(int(count) for count in row) for row in matrix),
    )


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None
