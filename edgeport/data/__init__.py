"""Input data: real sentences and images bundled with Python and scikit-learn, readers for
the files users pass, and examples turned into feeds for one artifact.  Above the runtime:
feeds are made with the runtime's own processing."""

from .bundled import digits_images, generation_prompts, stdlib_sentences
from .examples import (CalibrationReader, ExampleSet, concat_padded, examples_for, fit_to_range, hash_values,
                       in_model_dtype, raw_images, shared_text_length)
from .readers import read_examples, read_labels

__all__ = ["CalibrationReader", "ExampleSet", "concat_padded", "digits_images", "examples_for", "fit_to_range",
           "generation_prompts", "hash_values", "in_model_dtype", "raw_images", "read_examples", "read_labels",
           "shared_text_length", "stdlib_sentences"]
