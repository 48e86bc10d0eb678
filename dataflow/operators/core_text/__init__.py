"""DataFlow's text-operator import path (``from dataflow.operators.core_text import PromptedRefiner``): the
text operators an image-text pipeline needs, which live with the image operators here."""

from dataflow.operators.core_vision.generate.prompted_generator import PromptedGenerator
from dataflow.operators.core_vision.refine.prompted_refiner import PromptedRefiner

__all__ = ["PromptedGenerator", "PromptedRefiner"]
