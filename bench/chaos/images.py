"""The images: the model package's 16 radiographs, each one's result classified in this process (what every
succeeded job of it must say), and the uploads made of them, each file named for its radiograph."""

import importlib.metadata
import io
import zipfile
from pathlib import Path

from bench.chaos.settings import MAX_BATCH, MODEL_PACKAGE, RADIOGRAPH_COUNT, RADIOGRAPHS_IN_PACKAGE


def radiographs() -> list[bytes]:
    """The 16 real radiographs of the installed model package, sorted by name (located, never copied)."""
    folder = Path(str(importlib.metadata.distribution(MODEL_PACKAGE).locate_file(RADIOGRAPHS_IN_PACKAGE)))
    images = [path.read_bytes() for path in sorted(folder.glob("*.jpeg"))]
    if len(images) != RADIOGRAPH_COUNT:
        raise RuntimeError(f"{folder} holds {len(images)} radiographs, not {RADIOGRAPH_COUNT}: is {MODEL_PACKAGE} "
                           "installed whole?")
    return images


def reference_results(images: list[bytes]) -> list[list[float]]:
    """Each radiograph's probabilities classified in this process as the workers do (the default model on
    onnxruntime, one thread): what every succeeded job of it must say."""
    from pneuradnet.classifier import Classifier
    from pneuradnet.manifest import MODEL_CACHE_DIR

    classifier = Classifier.load("default", runtime="onnxruntime", threads=1, max_batch=MAX_BATCH,
                                 cache_dir=MODEL_CACHE_DIR)
    outcomes = classifier.classify([(f"src{n:02d}.jpeg", data) for n, data in enumerate(images)])
    bad = [str(outcome) for outcome in outcomes if isinstance(outcome, Exception)]
    if bad:
        raise RuntimeError(f"the model package's radiographs do not classify here: {bad}")
    return [list(outcome.predictions) for outcome in outcomes if not isinstance(outcome, Exception)]


def loose_files(op: str, sources: list[int], images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"op{op}-n{n:03d}-src{source:02d}.jpeg", images[source], "image/jpeg"))
            for n, source in enumerate(sources)]


def zip_file(op: str, sources: list[int], images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as members:
        for n, source in enumerate(sources):
            members.writestr(f"study-{op}/img{n:03d}-src{source:02d}.jpeg", images[source])
    return [("files", (f"op{op}.zip", archive.getvalue(), "application/zip"))]
