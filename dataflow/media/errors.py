"""The one error type image loading raises, with a machine-readable reason code."""

from __future__ import annotations

REASONS = ("missing", "empty", "truncated", "not_an_image", "too_large", "unsupported", "error")


class ImageLoadError(Exception):
    """An image could not be read. ``reason`` is one of ``REASONS``; ``detail`` says more for people."""

    def __init__(self, reason: str, detail: str = "", source: object = None):
        if reason not in REASONS:
            raise ValueError(f"unknown image error reason {reason!r}; expected one of {REASONS}")
        self.reason = reason
        self.detail = detail
        self.source = source
        super().__init__(f"{reason}: {detail}" if detail else reason)

    @property
    def code(self) -> str:
        """The reason code alone, as written to ``image_error`` columns and rejected rows."""
        return self.reason
