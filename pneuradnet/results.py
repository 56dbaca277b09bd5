"""The record of one classified image, and the original service's response shape."""

from dataclasses import asdict, dataclass, field


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
    source: dict | None = None
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

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "labels": list(self.labels),
            "predictions": list(self.predictions),
            "predicted_class": self.predicted_class,
            "confidence": self.confidence,
        }

    def to_legacy(self) -> dict:
        """The original synchronous service's body: predictions nested once, as Keras returned them."""
        return {
            "filename": self.filename,
            "predictions": [list(self.predictions)],
            "predicted_class": self.predicted_class,
            "confidence": self.confidence,
        }
