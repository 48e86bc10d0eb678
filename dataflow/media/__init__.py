"""Image loading: one entry point for paths, bytes, HF image dicts and PIL images, one error type."""

from dataflow.media.errors import REASONS, ImageLoadError
from dataflow.media.info import image_info
from dataflow.media.loader import DEFAULT_MAX_PIXELS, load_image, open_bytes, open_image, resolve_path, to_mode

__all__ = [
    "REASONS",
    "ImageLoadError",
    "image_info",
    "load_image",
    "open_bytes",
    "open_image",
    "resolve_path",
    "to_mode",
    "DEFAULT_MAX_PIXELS",
]
