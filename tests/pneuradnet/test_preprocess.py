import numpy as np
import pytest
from PIL import Image

from pneuradnet.images import decode_image
from pneuradnet.manifest import Scaling, load_manifest
from pneuradnet.preprocess import scale_pixels, to_model_input

NORMAL = "NORMAL2-IM-1430-0001"


@pytest.fixture(scope="module")
def default_manifest():
    return load_manifest("default")


@pytest.fixture(scope="module")
def vgg16_manifest():
    return load_manifest("pneuradnet-vgg16")


def test_default_input_is_the_nearest_resize_of_the_rgb_image_scaled_to_minus_one_one(radiograph, default_manifest):
    image = decode_image(radiograph(NORMAL).read_bytes())
    assert image.mode == "L"

    pixels = to_model_input(image, default_manifest)

    expected = np.asarray(image.convert("RGB").resize((150, 150), Image.Resampling.NEAREST), dtype=np.float32)
    np.testing.assert_array_equal(pixels, expected / np.float32(127.5) - np.float32(1.0))
    assert pixels.dtype == np.float32
    assert pixels.shape == (150, 150, 3)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


def test_default_input_matches_the_keras_pipeline_the_model_was_trained_with(radiograph, default_manifest):
    keras = pytest.importorskip("keras")
    path = radiograph(NORMAL)

    trained_on = keras.applications.xception.preprocess_input(
        keras.utils.img_to_array(keras.utils.load_img(path, target_size=(150, 150), interpolation="nearest"))
    )

    np.testing.assert_allclose(to_model_input(decode_image(path.read_bytes()), default_manifest), trained_on, atol=1e-6)


def test_colour_conversion_comes_before_the_resize(vgg16_manifest):
    # Pillow resizes a palette image with NEAREST whatever filter is asked, so only convert-then-resize gives
    # the manifest's LANCZOS; that is the order Keras' load_img, which trained the models, uses.
    stripes = Image.fromarray(np.tile(np.array([[0, 1]], dtype=np.uint8), (900, 300)), mode="P")
    stripes.putpalette([0, 0, 0, 255, 255, 255])

    pixels = to_model_input(stripes, vgg16_manifest)

    converted_first = np.asarray(stripes.convert("RGB").resize((500, 720), Image.Resampling.LANCZOS)) / 255.0
    resized_first = np.asarray(stripes.resize((500, 720), Image.Resampling.LANCZOS).convert("RGB")) / 255.0
    np.testing.assert_allclose(pixels, converted_first, atol=1e-6)
    assert not np.allclose(pixels, resized_first, atol=0.1)


def test_grayscale_becomes_three_equal_channels(radiograph, default_manifest):
    pixels = to_model_input(decode_image(radiograph(NORMAL).read_bytes()), default_manifest)

    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_vgg16_input_is_lanczos_resized_and_scaled_to_unit(radiograph, vgg16_manifest):
    image = decode_image(radiograph(NORMAL).read_bytes())

    pixels = to_model_input(image, vgg16_manifest)

    assert pixels.shape == (720, 500, 3)  # height x width
    assert pixels.dtype == np.float32
    expected = np.asarray(image.convert("RGB").resize((500, 720), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    np.testing.assert_allclose(pixels, expected, atol=1e-7)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_an_image_already_at_the_input_size_is_not_resampled(default_manifest):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))

    pixels = to_model_input(image, default_manifest)

    np.testing.assert_array_equal(pixels, np.asarray(image, dtype=np.float32) / np.float32(127.5) - 1)


def test_one_channel_models_get_a_channel_axis(default_manifest):
    manifest = default_manifest.model_copy(
        update={"input": default_manifest.input.model_copy(update={"channels": 1})}
    )

    pixels = to_model_input(Image.new("RGB", (300, 200), (255, 255, 255)), manifest)

    assert pixels.shape == (150, 150, 1)
    np.testing.assert_array_equal(pixels, 1.0)


@pytest.mark.parametrize(
    ("scaling", "black", "white"),
    [(Scaling.MINUS_ONE_TO_ONE, -1.0, 1.0), (Scaling.UNIT, 0.0, 1.0), (Scaling.NONE, 0.0, 255.0)],
)
def test_scalings_map_black_and_white_to_their_ends(scaling, black, white):
    scaled = scale_pixels(np.array([0.0, 255.0], dtype=np.float32), scaling)

    assert scaled.tolist() == [black, white]
    assert scaled.dtype == np.float32
