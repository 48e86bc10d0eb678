"""dataflow: cached, resumable pipelines for curating image and image-text training sets."""

__version__ = "0.1.0"
# The distribution's name on PyPI ("dataflow" there is an unrelated project); the import package is `dataflow`.
DISTRIBUTION = "dataflow-curate"


def install_hint(extra: str) -> str:
    """The install line for an extra, from PyPI and from a checkout."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
