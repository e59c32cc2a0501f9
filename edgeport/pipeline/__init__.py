"""``edgeport ship``: one recipe from trained model to verified, benchmarked, packaged artifacts."""

from .recipe import DEMO_RECIPE, Recipe, load_recipe
from .ship import ShipResult, ship

__all__ = ["DEMO_RECIPE", "Recipe", "ShipResult", "load_recipe", "ship"]
