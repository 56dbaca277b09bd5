"""Grad-CAM: where in the radiograph the model looked for the class it predicted, as a heatmap over the image.

`GradCam` computes the heatmap of one preprocessed image from the convolutional layer the manifest names
(`explain_layer`); `overlay_png` blends it over the original image as a PNG. Gradients need TensorFlow, so
`GradCam` imports it when it is made (a process that never explains never imports it); the overlay needs only
Pillow and numpy. Predictions never come from here: the heatmap explains a class the serving runtime chose.

Grad-CAM (Selvaraju et al., 2017): the gradient of the class score with respect to the layer's feature maps,
averaged over each map, weighs the maps; their weighted sum, with negative values cut to 0, is the heatmap.
"""

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pneuradnet.errors import ModelFileError, ModelManifestError
from pneuradnet.keras_model import load_keras_model
from pneuradnet.manifest import ModelManifest

if TYPE_CHECKING:
    import keras

Forward = Callable[[Any], tuple[Any, Any]]
"""A batch (array or tensor) to (the explained layer's feature maps, the model's output), as TensorFlow tensors:
Any, for TensorFlow and Keras ship no types."""

LAYER_SEPARATOR = "/"
"""Separates the names of a layer path: `xception/block14_sepconv2_act` is a layer of the nested model `xception`."""

CHAIN_TOLERANCE = 1e-4
"""Largest difference, relative to the output's size, allowed between the model and the chain of layers Grad-CAM
runs in its place (see GradCam._check_chain)."""

PNG_COMPRESS_LEVEL = 1
"""zlib level of the overlay PNG: 1 writes a 1664x1128 radiograph in about 80 ms where the default 6 takes 410 ms,
for a file 12% larger (measured on the shipped radiographs)."""

HEATMAP_OPACITY = 0.6
"""How much of the colour covers the image where the heatmap is 1 (where it is 0, the image shows as it is)."""

_COLORMAP_STOPS = (  # position in [0, 1], RGB: a "jet"-like scale, dark blue (cold) to dark red (hot)
    (0.0, (0, 0, 128)),
    (0.125, (0, 0, 255)),
    (0.375, (0, 255, 255)),
    (0.625, (255, 255, 0)),
    (0.875, (255, 0, 0)),
    (1.0, (128, 0, 0)),
)


def _colormap() -> tuple[list[int], list[int], list[int]]:
    """Three 256-entry tables (red, green, blue) for Image.point, interpolated between the stops."""
    positions = np.linspace(0.0, 1.0, 256)
    stops = np.array([stop for stop, _ in _COLORMAP_STOPS])
    colors = np.array([color for _, color in _COLORMAP_STOPS], dtype=np.float64)
    channels = [np.rint(np.interp(positions, stops, colors[:, c])).astype(int).tolist() for c in range(3)]
    return channels[0], channels[1], channels[2]


COLORMAP = _colormap()


class GradCam:
    """The Grad-CAM of a Keras model file at the manifest's `explain_layer`; loads TensorFlow and the model.

    Raises ModelManifestError if the manifest names no layer, or one the model does not have or that is not
    convolutional; ModelFileError if the file is not a Keras model.
    """

    def __init__(self, model_file: str | Path, manifest: ModelManifest, *, threads: int | None = None) -> None:
        if manifest.explain_layer is None:
            raise ModelManifestError(
                f"manifest {manifest.name!r} names no explain_layer: Grad-CAM needs the convolutional layer to "
                'explain, e.g. "explain_layer": "block5_conv3" (a path such as "xception/block14_sepconv2_act" '
                "names a layer inside a nested model)")
        model_file = Path(model_file)
        if model_file.suffix == ".onnx":
            raise ModelFileError(f"Grad-CAM needs the Keras model file (gradients come from TensorFlow); "
                                 f"{model_file} is ONNX")
        try:
            import tensorflow as tf  # heavy: imported only by a process that explains
        except ImportError as error:
            raise ImportError("Grad-CAM needs TensorFlow: pip install 'pneuradnet[tensorflow]'") from error
        if threads:
            try:  # possible only before TensorFlow starts its thread pools; a process serving with it has done so
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        model = load_keras_model(model_file)
        self.manifest = manifest
        self.layer_path = _resolve(model, manifest.explain_layer, manifest.name)
        if manifest.output == "probabilities":
            _strip_softmax(model)
        forward = _forward(model, self.layer_path, manifest.name)
        self._check_chain(model, forward)

        def class_activation_map(batch: tf.Tensor, class_index: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(batch)  # records the whole pass, even through layers whose weights are frozen
                features, scores = forward(batch)
                score = tf.gather(scores, class_index, axis=1)
            gradients = tape.gradient(score, features)
            weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
            return tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))[0]

        self._tf = tf
        # Traced into a graph once per input signature. tf.function as a call rather than a decorator: TensorFlow
        # ships no types, and the attribute's annotation says what the traced function takes and gives.
        self._cam: Callable[[Any, Any], Any] = tf.function(class_activation_map, reduce_retracing=True)

    def heatmap(self, pixels: np.ndarray, class_index: int) -> np.ndarray:
        """The heatmap of one preprocessed image (height, width, channels) for the class at `class_index`.

        Float32 in [0, 1] at the layer's resolution (e.g. 5x5 for the default model), 1 where the class is most
        supported; all zeros if nothing in the layer supports the class.
        """
        spec = self.manifest.input
        expected = (spec.height, spec.width, spec.channels)
        if pixels.shape != expected:
            raise ValueError(f"Grad-CAM takes one preprocessed image of shape {expected}, got {pixels.shape}")
        if not 0 <= class_index < len(self.manifest.labels):
            raise ValueError(f"class_index must be in [0, {len(self.manifest.labels)}), got {class_index}")
        batch = self._tf.constant(np.asarray(pixels, dtype=np.float32)[np.newaxis])
        cam: np.ndarray = self._cam(batch, self._tf.constant(class_index, dtype=self._tf.int32)).numpy().astype(
            np.float32)
        peak = float(cam.max())
        if not np.isfinite(peak) or peak <= 0.0:
            return np.zeros_like(cam)
        return np.clip(cam / peak, 0.0, 1.0)

    def _check_chain(self, model: "keras.Model", forward: Forward) -> None:
        """Grad-CAM runs the model as a chain of its layers around a nested model: refuse a model where that chain
        does not give the model's own output (a branch that bypasses the nested model, say)."""
        spec = self.manifest.input
        probe = np.random.default_rng(0).uniform(-1, 1, (1, spec.height, spec.width, spec.channels)).astype(np.float32)
        # As the model was built: some saved models take their one input in a list.
        expected = np.asarray(model([probe] if isinstance(model.input, list | tuple) else probe, training=False))
        try:
            _, chained = forward(probe)
            chained = np.asarray(chained)
        except Exception as error:  # Keras raises shape and type errors of many kinds when the chain is wrong
            raise ModelManifestError(self._not_a_chain(f"running its layers in order fails ({error})")) from error
        if chained.shape != expected.shape:
            raise ModelManifestError(self._not_a_chain(f"shape {chained.shape} instead of {expected.shape}"))
        difference = float(np.max(np.abs(chained - expected)))
        if difference > CHAIN_TOLERANCE * max(1.0, float(np.max(np.abs(expected)))):
            raise ModelManifestError(self._not_a_chain(f"outputs differ by {difference:.3g}"))

    def _not_a_chain(self, why: str) -> str:
        return (f"manifest {self.manifest.name!r}: explain_layer {self.manifest.explain_layer!r} is inside a nested "
                f"model, which Grad-CAM reaches only if the layers around that model form a chain; they do not: "
                f"{why}. Name a layer of the outer model instead")


def overlay_png(image: Image.Image, heatmap: np.ndarray, *, opacity: float = HEATMAP_OPACITY) -> bytes:
    """The heatmap, coloured and blended over the image at the image's size, as PNG bytes.

    The heatmap covers the whole model input, which is the whole image resized (aspect ratio not kept), so
    stretching it back to the image's width and height puts each cell over the region it came from.
    """
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap is 2-D, got shape {heatmap.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    base = image.convert("RGB")
    levels = np.rint(np.clip(np.nan_to_num(heatmap), 0.0, 1.0) * 255).astype(np.uint8)
    heat = Image.fromarray(levels, mode="L").resize(base.size, Image.Resampling.BILINEAR)
    red, green, blue = COLORMAP
    colored = Image.merge("RGB", [heat.point(red), heat.point(green), heat.point(blue)])
    mask = heat.point([round(level * opacity) for level in range(256)])
    buffer = io.BytesIO()
    Image.composite(colored, base, mask).save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


# --- finding the layer and running the model up to it ----------------------------------------------------------


def _resolve(model: "keras.Model", layer_path: str, manifest_name: str) -> tuple[str, ...]:
    """The path of names from the model to the layer; a bare name not in the outer model is looked for in the
    nested models, and used if exactly one has it."""
    parts = tuple(layer_path.split(LAYER_SEPARATOR))
    container = model
    for depth, name in enumerate(parts):
        layer = _layer_named(container, name)
        if layer is None and len(parts) == 1:
            found = [path for path in _paths(model) if path[-1] == name]
            if len(found) == 1:
                return _checked(model, found[0], manifest_name)
            if len(found) > 1:
                raise ModelManifestError(
                    f"manifest {manifest_name!r}: explain_layer {layer_path!r} names a layer of several nested models "
                    f"({', '.join(map(LAYER_SEPARATOR.join, found))}); name one by its path")
        if layer is None:
            where = f" in its nested model {LAYER_SEPARATOR.join(parts[:depth])!r}" if depth else ""
            raise ModelManifestError(
                f"manifest {manifest_name!r}: explain_layer {layer_path!r}: the model has no layer {name!r}{where}; "
                f"its last convolutional layers are {_candidates(model)}")
        if depth < len(parts) - 1 and not _is_model(layer):
            raise ModelManifestError(
                f"manifest {manifest_name!r}: explain_layer {layer_path!r}: {name!r} is a layer, not a nested model "
                "with layers of its own")
        container = layer
    return _checked(model, parts, manifest_name)


def _checked(model: "keras.Model", path: tuple[str, ...], manifest_name: str) -> tuple[str, ...]:
    import keras

    layer = _layer_at(model, path)
    shape = () if isinstance(layer, keras.layers.InputLayer) else _output_shape(layer)
    if len(shape) != 4:
        raise ModelManifestError(
            f"manifest {manifest_name!r}: explain_layer {LAYER_SEPARATOR.join(path)!r} is not convolutional: its "
            f"output has shape {shape}, Grad-CAM needs (batch, height, width, channels); "
            f"the model's last convolutional layers are {_candidates(model)}")
    return path


def _forward(model: "keras.Model", path: tuple[str, ...], manifest_name: str) -> Forward:
    """A function of a batch giving (the layer's output, the model's output), both differentiable."""
    import keras

    name, *rest = path
    layer = model.get_layer(name)
    if not rest and not _is_model(layer):
        # A layer of this model's own graph: one functional model has both outputs, whatever the graph's shape.
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ModelManifestError(f"manifest {manifest_name!r}: Grad-CAM needs a model with one input and one "
                                     f"output, this one has {len(model.inputs)} and {len(model.outputs)}")
        both = keras.Model(model.inputs[0], [layer.output, model.outputs[0]])
        return lambda batch: tuple(both(batch, training=False))
    if rest:
        inner = _forward(layer, tuple(rest), manifest_name)
    else:  # the nested model as a whole: its output is the feature maps

        def inner(batch: Any) -> tuple[Any, Any]:
            features = layer(batch, training=False)
            return features, features

    # Keras 3 gives no tensor of the nested model's inner layers in the outer graph: the outer model is run
    # layer by layer, the nested one through `inner` (GradCam._check_chain verifies that this is the model).
    layers = [each for each in model.layers if not isinstance(each, keras.layers.InputLayer)]
    position = next(index for index, each in enumerate(layers) if each is layer)
    before, after = layers[:position], layers[position + 1:]

    def chain(batch: Any) -> tuple[Any, Any]:
        for each in before:
            batch = each(batch, training=False)
        features, batch = inner(batch)
        for each in after:
            batch = each(batch, training=False)
        return features, batch

    return chain


def _strip_softmax(model: "keras.Model") -> None:
    """Explain the class's logit, not its probability: a softmax saturates near 0 and 1, where its gradients vanish
    (as Keras' own Grad-CAM example does). Changes this process's copy of the model only."""
    import keras

    last = model.layers[-1]
    if getattr(getattr(last, "activation", None), "__name__", "") == "softmax":
        last.activation = keras.activations.linear


def _is_model(layer: "keras.layers.Layer") -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _layer_named(container: "keras.Model", name: str) -> "keras.layers.Layer | None":
    try:
        return container.get_layer(name)
    except ValueError:
        return None


def _layer_at(model: "keras.Model", path: tuple[str, ...]) -> "keras.layers.Layer":
    layer = model
    for name in path:
        layer = layer.get_layer(name)
    return layer


def _output_shape(layer: "keras.layers.Layer") -> tuple[int | None, ...]:
    """The shape of the layer's one output; () if it has several. A nested model's `output` is that of its own
    graph, which is what it gives in the outer one too."""
    output = layer.output
    return tuple(output.shape) if hasattr(output, "shape") else ()


def _paths(model: "keras.Model", prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of every layer but the inputs, nested ones included, in the models' order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = (*prefix, layer.name)
        found.append(path)
        if _is_model(layer):
            found += _paths(layer, path)
    return found


def _candidates(model: "keras.Model", count: int = 5) -> str:
    convolutional = []
    for path in _paths(model):
        try:
            if len(_output_shape(_layer_at(model, path))) == 4:
                convolutional.append(LAYER_SEPARATOR.join(path))
        except ValueError:  # a layer called more than once has no single output
            continue
    return ", ".join(repr(path) for path in convolutional[-count:]) or "none"
