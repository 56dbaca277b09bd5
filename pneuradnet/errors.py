"""Typed errors raised by the library; only the API turns them into HTTP problems."""


class PneuradnetError(Exception):
    """Base of every error this library raises on purpose."""


class InvalidImageError(PneuradnetError):
    """The bytes are not an image the service can classify; the message says why, for a person."""


class ModelManifestError(PneuradnetError):
    """A manifest is missing, malformed, or does not match the model file it names."""


class ModelFileError(PneuradnetError):
    """The model file a manifest points at cannot be found or read."""


class ConversionError(PneuradnetError):
    """A model could not be converted to another runtime's format, or the converted model disagrees with it."""
