"""``edgeport quantize``: INT8 (dynamic, static QDQ), FP16 and, for causal LMs, weight-only
INT4/INT8 artifacts, each ending with a parity check against the input artifact on real
data.  Modes are recipes in a registry (recipes.py), each in its own module, registered
when this package is imported; the stage that drives them is stage.py.
"""

from . import dynamic, fp16, static, weight_only  # noqa: F401  (each registers its recipes)
from .options import QuantizeOptions
from .recipes import registered_modes
from .stage import quantize

__all__ = ["QuantizeOptions", "quantize", "registered_modes"]
