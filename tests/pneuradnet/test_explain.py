"""Grad-CAM (pneuradnet.explain): heatmaps of the real default model on real radiographs, tiny models for the
ways a manifest can name the wrong layer, and the overlay."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneuradnet.errors import ModelManifestError
from pneuradnet.explain import GradCam, overlay_png
from pneuradnet.images import decode_image
from pneuradnet.manifest import load_manifest

# Keras 3 converts its variables with np.array(..., copy=False), which NumPy 2 warns about; harmless here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def explainer(default_classifier) -> GradCam:
    return GradCam(default_classifier.model_file, default_classifier.manifest)


def heatmap_of(explainer: GradCam, classifier, path: Path, class_index: int | None = None) -> np.ndarray:
    """The heatmap of a radiograph, for the class the serving runtime predicts unless another is asked."""
    image = classifier.prepare(path.name, path.read_bytes())
    if class_index is None:
        [probabilities] = classifier.probabilities(image.pixels[np.newaxis])
        class_index = int(np.argmax(probabilities))
    return explainer.heatmap(image.pixels, class_index)


@pytest.mark.model
def test_the_default_models_layer_is_found_inside_its_nested_xception(explainer):
    assert explainer.layer_path == ("xception", "block14_sepconv2_act")


@pytest.mark.model
def test_a_heatmap_is_deterministic_in_0_to_1_at_the_layers_resolution_and_not_constant(
        explainer, default_classifier, radiographs):
    first = heatmap_of(explainer, default_classifier, radiographs[-1])
    second = heatmap_of(explainer, default_classifier, radiographs[-1])

    assert np.array_equal(first, second)
    assert first.shape == (5, 5) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() == 1.0
    assert first.std() > 0.05, "a constant heatmap explains nothing"


@pytest.mark.model
def test_two_radiographs_get_different_heatmaps(explainer, default_classifier, radiographs):
    normal, pneumonia = radiographs[0], radiographs[-1]

    assert not np.allclose(heatmap_of(explainer, default_classifier, normal),
                           heatmap_of(explainer, default_classifier, pneumonia), atol=0.05)


@pytest.mark.model
def test_the_two_classes_of_one_radiograph_get_different_heatmaps(explainer, default_classifier, radiographs):
    heatmaps = [heatmap_of(explainer, default_classifier, radiographs[-1], index) for index in (0, 1)]

    assert not np.allclose(*heatmaps, atol=0.05)


@pytest.mark.model
def test_the_overlay_is_a_png_of_the_radiographs_size(explainer, default_classifier, radiographs):
    path = radiographs[-1]
    original = decode_image(path.read_bytes())

    overlay = Image.open(io.BytesIO(overlay_png(original, heatmap_of(explainer, default_classifier, path))))

    assert overlay.format == "PNG"
    assert overlay.size == original.size == Image.open(path).size
    pixels = np.asarray(overlay.convert("RGB"), dtype=np.int16)
    assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).any(), "the heatmap's colours are over the radiograph"


@pytest.mark.model
def test_a_heatmap_takes_only_the_models_input_shape_and_a_known_class(explainer):
    with pytest.raises(ValueError, match=r"shape \(150, 150, 3\), got \(100, 100, 3\)"):
        explainer.heatmap(np.zeros((100, 100, 3), np.float32), 0)
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 2\), got 2"):
        explainer.heatmap(np.zeros((150, 150, 3), np.float32), 2)


# --- the overlay alone -----------------------------------------------------------------------------------------


def test_the_overlay_leaves_the_image_as_it_is_where_the_heatmap_is_0_and_colours_it_where_it_is_1():
    gray = Image.new("L", (40, 30), 100)

    cold = Image.open(io.BytesIO(overlay_png(gray, np.zeros((5, 5), np.float32))))
    hot = Image.open(io.BytesIO(overlay_png(gray, np.ones((5, 5), np.float32), opacity=0.5)))

    assert cold.size == hot.size == (40, 30)
    assert cold.convert("RGB").getcolors() == [(1200, (100, 100, 100))]
    [(count, (red, green, blue))] = hot.convert("RGB").getcolors()
    assert count == 1200 and red > 100 and green < 100 and blue < 100  # dark red over gray, half and half


def test_the_overlay_refuses_what_is_not_a_heatmap():
    with pytest.raises(ValueError, match="a heatmap is 2-D"):
        overlay_png(Image.new("L", (8, 8)), np.zeros((1, 5, 5)))
    with pytest.raises(ValueError, match="opacity must be in"):
        overlay_png(Image.new("L", (8, 8)), np.zeros((5, 5)), opacity=2)


# --- naming the layer: tiny models ---------------------------------------------------------------------------


@pytest.fixture
def nested_model(tmp_path) -> Path:
    """m.keras: a nested model `base` (a 3x3 convolution `conv`) under pooling and a dense `head`, like the
    default model's Xception base under its head."""
    keras = pytest.importorskip("keras")
    inner_input = keras.Input((32, 32, 3))
    base = keras.Model(inner_input, keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inner_input),
                       name="base")
    outer_input = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base(outer_input))
    path = tmp_path / "m.keras"
    keras.Model(outer_input, keras.layers.Dense(2, name="head")(pooled)).save(path)
    return path


def test_a_manifest_without_explain_layer_cannot_be_explained(write_manifest, nested_model):
    with pytest.raises(ModelManifestError, match="manifest 'tiny' names no explain_layer: Grad-CAM needs"):
        GradCam(nested_model, load_manifest(write_manifest()))


@pytest.mark.parametrize(("layer", "message"), [
    ("base/nope", "explain_layer 'base/nope': the model has no layer 'nope' in its nested model 'base'; "
                  "its last convolutional layers are .*'base/conv'"),
    ("nope", "explain_layer 'nope': the model has no layer 'nope'; its last convolutional layers are"),
    ("head", "explain_layer 'head' is not convolutional: its output has shape \\(None, 2\\)"),
    ("head/conv", "'head' is a layer, not a nested model"),
])
def test_a_layer_the_model_does_not_have_is_a_clear_manifest_error(write_manifest, nested_model, layer, message):
    with pytest.raises(ModelManifestError, match=message):
        GradCam(nested_model, load_manifest(write_manifest(explain_layer=layer)))


def test_an_explain_layer_that_is_not_a_path_is_refused_with_the_manifest(write_manifest):
    with pytest.raises(ModelManifestError, match="explain_layer: String should match pattern"):
        load_manifest(write_manifest(explain_layer="base//conv"))


@pytest.mark.parametrize("layer", ["base/conv", "conv", "base"])
def test_a_layer_inside_a_nested_model_is_named_by_its_path_its_name_or_the_nested_model(
        write_manifest, nested_model, layer):
    explainer = GradCam(nested_model, load_manifest(write_manifest(explain_layer=layer)))
    pixels = np.random.default_rng(1).uniform(0, 1, (32, 32, 3)).astype(np.float32)

    heatmap = explainer.heatmap(pixels, 1)

    assert explainer.layer_path == (("base",) if layer == "base" else ("base", "conv"))
    assert heatmap.shape == (30, 30)
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_a_nested_model_that_the_outer_model_bypasses_is_refused(tmp_path, write_manifest):
    keras = pytest.importorskip("keras")
    inner_input = keras.Input((32, 32, 3))
    base = keras.Model(inner_input, keras.layers.Conv2D(4, 3, name="conv")(inner_input), name="base")
    outer_input = keras.Input((32, 32, 3))
    both = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(base(outer_input)),
                                       keras.layers.GlobalAveragePooling2D()(outer_input)])  # a branch around base
    keras.Model(outer_input, keras.layers.Dense(2)(both)).save(tmp_path / "m.keras")

    with pytest.raises(ModelManifestError, match="only if the layers around that model form a chain"):
        GradCam(tmp_path / "m.keras", load_manifest(write_manifest(explain_layer="base/conv")))


def test_the_vgg16_manifests_layer_is_found_in_the_pneuradnet_architecture(tmp_path):
    # As in test_classifier's VGG16 test: the base's layers are the outer model's own, the head a softmax.
    keras = pytest.importorskip("keras")
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 48, 3))
    head = keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(16, activation="relu")(keras.layers.GlobalAveragePooling2D()(base.output)))
    keras.Model(base.input, head).save(tmp_path / "finalModel.keras")
    manifest = load_manifest("pneuradnet-vgg16").with_input_size(64, 48)

    explainer = GradCam(tmp_path / "finalModel.keras", manifest)
    heatmap = explainer.heatmap(np.random.default_rng(2).uniform(0, 1, (64, 48, 3)).astype(np.float32), 2)

    assert explainer.layer_path == ("block5_conv3",)
    assert heatmap.shape == (4, 3)
    assert np.isfinite(heatmap).all() and heatmap.min() >= 0.0 and heatmap.max() <= 1.0
