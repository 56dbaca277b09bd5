"""The record of one classified image, and the one shape it is published in (a job's `result`)."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prediction:
    filename: str
    labels: tuple[str, ...]
    predictions: tuple[float, ...]
    """Probabilities in label order; they sum to 1."""
    model_name: str
    model_version: str
    runtime: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    """Non-identifying facts about the file, for DICOM (pneuradnet.dicom.facts); None for PNG and JPEG."""

    @property
    def predicted_class(self) -> str:
        return self.labels[self._best]

    @property
    def confidence(self) -> float:
        return self.predictions[self._best]

    @property
    def _best(self) -> int:
        return max(range(len(self.predictions)), key=self.predictions.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        """The prediction as a succeeded job's `result` carries it (the service's wire format; `predict` prints it
        with the file name in front). The file name is not part of it: a job names its file itself."""
        return {
            "labels": list(self.labels),
            "predictions": list(self.predictions),
            "predicted_class": self.predicted_class,
            "confidence": self.confidence,
            "model": {"name": self.model_name, "version": self.model_version},
            "runtime": self.runtime,
            "timings_ms": self.timings_ms,
            "source": self.source,
        }
