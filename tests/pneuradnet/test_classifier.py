import json
import threading

import numpy as np
import pytest
from PIL import Image

from pneuradnet.classifier import Classifier
from pneuradnet.errors import InvalidImageError
from pneuradnet.images import decode_image
from pneuradnet.manifest import load_manifest
from pneuradnet.results import Prediction

# Keras 3 converts its variables with np.array(..., copy=False), which NumPy 2 warns about; harmless here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

CONFIDENT = {
    "person1952_bacteria_4883": "PNEUMONIA",
    "person1946_bacteria_4874": "PNEUMONIA",
    "NORMAL2-IM-1430-0001": "NORMAL",
    "NORMAL2-IM-1440-0001": "NORMAL",
}
"""Radiographs the default model gets right with more than 0.95 confidence."""


def true_label(path) -> str:
    return "NORMAL" if path.name.startswith("NORMAL") else "PNEUMONIA"


@pytest.fixture(scope="module")
def predictions(default_classifier, radiographs) -> list[Prediction]:
    """The default model's predictions on the 16 real radiographs, in one call."""
    return default_classifier.classify((path.name, path.read_bytes()) for path in radiographs)


def test_the_real_radiographs_are_8_normal_and_8_pneumonia(radiographs):
    assert len(radiographs) == 16
    assert sum(true_label(path) == "NORMAL" for path in radiographs) == 8


# --- the real default model ------------------------------------------------------------------------------------


@pytest.mark.model
def test_default_model_gets_at_least_12_of_16_right(radiographs, predictions):
    correct = sum(p.predicted_class == true_label(path) for path, p in zip(radiographs, predictions, strict=True))

    assert correct >= 12


@pytest.mark.model
def test_confident_cases_are_exactly_right(predictions):
    by_stem = {p.filename.removesuffix(".jpeg"): p for p in predictions}

    for stem, label in CONFIDENT.items():
        assert by_stem[stem].predicted_class == label, stem
        assert by_stem[stem].confidence > 0.9, stem


@pytest.mark.model
def test_probabilities_are_in_label_order_and_sum_to_1(predictions):
    for prediction in predictions:
        assert prediction.labels == ("NORMAL", "PNEUMONIA")
        assert all(0.0 <= p <= 1.0 for p in prediction.predictions)
        assert sum(prediction.predictions) == pytest.approx(1.0, abs=1e-9)
        assert prediction.confidence == max(prediction.predictions)
        assert prediction.model_name == "xception-pneumonia"
        assert prediction.runtime == "tensorflow"


@pytest.mark.model
def test_an_image_alone_gets_the_probabilities_it_gets_in_a_batch_of_16(default_classifier, radiographs, predictions):
    for path, in_batch in zip(radiographs, predictions, strict=True):
        [alone] = default_classifier.predict([default_classifier.prepare(path.name, path.read_bytes())])

        np.testing.assert_allclose(alone.predictions, in_batch.predictions, atol=1e-5, err_msg=path.name)


@pytest.mark.model
def test_a_smaller_max_batch_gives_the_same_probabilities(default_classifier, radiographs, predictions):
    in_fives = Classifier(default_classifier.manifest, default_classifier.runtime,
                          model_file=default_classifier.model_file, max_batch=5)

    again = in_fives.classify((path.name, path.read_bytes()) for path in radiographs)

    assert [p.filename for p in again] == [p.filename for p in predictions]
    np.testing.assert_allclose([p.predictions for p in again], [p.predictions for p in predictions], atol=1e-5)


@pytest.mark.model
def test_a_bad_image_gets_its_error_in_its_place_and_the_others_are_classified(default_classifier, radiograph):
    normal, pneumonia = radiograph("NORMAL2-IM-1430-0001"), radiograph("person1952_bacteria_4883")

    outcomes = default_classifier.classify([
        ("normal.jpeg", normal.read_bytes()),
        ("notes.txt", b"not an image"),
        ("pneumonia.jpeg", pneumonia.read_bytes()),
    ])

    assert [type(o) for o in outcomes] == [Prediction, InvalidImageError, Prediction]
    assert outcomes[0].filename == "normal.jpeg" and outcomes[0].predicted_class == "NORMAL"
    assert "not an image" in str(outcomes[1])
    assert outcomes[2].filename == "pneumonia.jpeg" and outcomes[2].predicted_class == "PNEUMONIA"


@pytest.mark.model
def test_a_batch_decoded_on_several_threads_comes_back_in_order_as_one_thread_decodes_it(default_classifier,
                                                                                      radiographs):
    items = [(path.name, path.read_bytes()) for path in radiographs]
    items.insert(5, ("notes.txt", b"not an image"))
    keep = [name.startswith("NORMAL") for name, _ in items]

    outcomes = default_classifier.prepare_each(items, keep_decoded=keep)

    assert isinstance(outcomes.pop(5), InvalidImageError)
    del items[5], keep[5]
    for (name, data), kept, outcome in zip(items, keep, outcomes, strict=True):
        assert outcome.filename == name
        np.testing.assert_array_equal(outcome.pixels, default_classifier.prepare(name, data).pixels)
        assert (outcome.decoded is not None) == kept


@pytest.mark.model
def test_the_same_radiograph_as_png_or_rgb_gets_the_same_answer(default_classifier, radiograph, encode):
    path = radiograph("person1946_bacteria_4874")
    gray = decode_image(path.read_bytes())

    outcomes = default_classifier.classify([
        ("original.jpeg", path.read_bytes()),
        ("gray.png", encode(gray, "PNG")),
        ("rgb.png", encode(gray.convert("RGB"), "PNG")),
    ])

    np.testing.assert_allclose([o.predictions for o in outcomes[1:]], [outcomes[0].predictions] * 2, atol=1e-5)


@pytest.mark.model
def test_to_dict_is_json_with_the_answer(predictions):
    record = json.loads(json.dumps(predictions[0].to_dict()))

    assert set(record) == {"labels", "predictions", "predicted_class", "confidence", "model", "runtime",
                           "timings_ms", "source"}  # a job's `result`, as the service publishes it
    assert record["model"] == {"name": "xception-pneumonia", "version": "0.3.0"}
    assert record["labels"] == ["NORMAL", "PNEUMONIA"]
    assert record["predicted_class"] in record["labels"]
    assert record["confidence"] == max(record["predictions"])
    assert set(record["timings_ms"]) == {"decode", "inference"}


@pytest.mark.model
def test_predicting_nothing_gives_nothing(default_classifier):
    assert default_classifier.predict([]) == []
    assert default_classifier.classify([]) == []


@pytest.mark.model
def test_max_batch_must_be_positive(default_classifier):
    with pytest.raises(ValueError, match="max_batch must be at least 1, got 0"):
        Classifier(default_classifier.manifest, default_classifier.runtime,
                   model_file=default_classifier.model_file, max_batch=0)


# --- the original PNEURADNET VGG16 architecture, random weights --------------------------------------------------


def test_vgg16_manifest_classifies_into_its_three_labels(tmp_path, radiograph):
    keras = pytest.importorskip("keras")
    manifest = load_manifest("pneuradnet-vgg16")
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(720, 500, 3))
    head = keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(16, activation="relu")(keras.layers.GlobalAveragePooling2D()(base.output))
    )
    model_file = tmp_path / "finalModel.keras"
    keras.Model(base.input, head).save(model_file)

    classifier = Classifier.load("pneuradnet-vgg16", model_path=model_file)
    [prediction] = classifier.classify([("x.jpeg", radiograph("person1951_bacteria_4882").read_bytes())])

    assert classifier.model_file == model_file
    assert prediction.labels == ("Normal", "Bacterial pneumonia", "Viral pneumonia") == manifest.labels
    assert len(prediction.predictions) == 3
    assert sum(prediction.predictions) == pytest.approx(1.0, abs=1e-5)
    assert prediction.predicted_class in manifest.labels
    assert prediction.model_name == "pneuradnet-vgg16"


def test_a_1_channel_image_reaches_the_model_of_a_tiny_classifier(write_manifest, keras_model_file, encode):
    keras_model_file()
    classifier = Classifier.load(write_manifest())

    [prediction] = classifier.classify([("gray.png", encode(Image.new("L", (100, 80), 90), "PNG"))])

    assert prediction.labels == ("cat", "dog")
    assert sum(prediction.predictions) == pytest.approx(1.0)


def test_images_whose_bytes_are_still_on_their_way_are_decoded_as_each_arrives(default_classifier, radiographs):
    arrived = [threading.Event() for _ in radiographs[:4]]

    def arriving(n: int):
        def wait_for_bytes() -> bytes:
            assert arrived[n].wait(10)
            return radiographs[n].read_bytes()
        return wait_for_bytes

    def missing() -> bytes:
        raise FileNotFoundError("the object is gone")

    threading.Timer(0.2, lambda: [event.set() for event in arrived]).start()
    outcomes = default_classifier.prepare_each([(f"{n}.jpeg", arriving(n)) for n in range(4)] + [("gone", missing)])

    direct = default_classifier.prepare_each([(f"{n}.jpeg", radiographs[n].read_bytes()) for n in range(4)])
    assert [outcome.pixels.tolist() for outcome in outcomes[:4]] == [image.pixels.tolist() for image in direct]
    assert isinstance(outcomes[4], FileNotFoundError)
