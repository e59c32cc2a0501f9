"""The public surface: every name edgeport and its packages export exists, and nothing else
is advertised (after httpx's test_exported_members)."""

from __future__ import annotations

import importlib

import pytest

import edgeport

PACKAGES = ["edgeport.runtime", "edgeport.parity", "edgeport.data", "edgeport.quantize"]


def test_top_level_names_resolve_lazily():
    assert sorted(edgeport.__all__) == edgeport.__all__
    for name in edgeport.__all__:
        assert getattr(edgeport, name) is not None, name
    with pytest.raises(AttributeError):
        edgeport.does_not_exist


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_lists_exactly_its_public_members(package):
    module = importlib.import_module(package)
    public = {name for name in vars(module) if not name.startswith("_")}
    submodules = {name for name in public if type(getattr(module, name)).__name__ == "module"}
    assert set(module.__all__) == public - submodules - {"annotations"}, package
