"""dataflow: cached, resumable pipelines for curating image and image-text training sets."""

__version__ = "0.1.0"
