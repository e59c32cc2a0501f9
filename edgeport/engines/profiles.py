"""TensorRT optimisation profiles: the min / opt / max shape of every input, derived from the
manifest's dynamic axes or given with ``--shapes``, and validated before anything is built.

The best-known TensorRT build failures are profiles that do not hold together: min > opt,
a dynamic input left without a range, two inputs that share an axis (``batch``,
``sequence``) given different sizes, a maximum past the model's position embeddings.  Each
is a clear error here, on any machine, instead of a builder message on the GPU box.

Inputs that share a symbolic axis share its range: ``--shapes input_ids:1x16,8x128,32x512``
sizes ``attention_mask`` and ``token_type_ids`` too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import InvalidOptionError
from ..manifest import Manifest, TensorSpec

Shape = tuple[int, ...]
DEFAULT_BATCH = (1, 8, 32)
DEFAULT_SEQUENCE = (1, 128, 512)
_DIMS = re.compile(r"^\d+(x\d+)*$")


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: Shape
    opt: Shape
    max: Shape
    source: str                       # "--shapes", or how the range was derived

    def to_dict(self) -> dict:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max),
                "source": self.source}


@dataclass(frozen=True)
class Profile:
    inputs: tuple[InputProfile, ...]

    def to_dict(self) -> list[dict]:
        return [p.to_dict() for p in self.inputs]

    def shape_range(self) -> dict[str, tuple[Shape, Shape]]:
        """input name -> (min shape, max shape): what an engine built with it accepts."""
        return {p.name: (p.min, p.max) for p in self.inputs}

    def describe(self) -> list[str]:
        return [f"{p.name}: min {_text(p.min)}, opt {_text(p.opt)}, max {_text(p.max)} ({p.source})"
                for p in self.inputs]


def _text(shape: Shape) -> str:
    return "x".join(map(str, shape))


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``NAME:MIN,OPT,MAX`` (each ``AxBxC``), or ``NAME:SHAPE`` for one fixed shape."""
    parsed: dict[str, tuple[Shape, Shape, Shape]] = {}
    for item in items:
        name, sep, rest = str(item).strip().rpartition(":")
        if not sep or not name or not rest:
            raise InvalidOptionError(f"--shapes '{item}' must look like NAME:MIN,OPT,MAX with shapes like 8x128 "
                                     "(e.g. input_ids:1x16,8x128,32x512), or NAME:SHAPE for one fixed shape")
        shapes = [s.strip() for s in rest.split(",")]
        if len(shapes) not in (1, 3) or not all(_DIMS.match(s) for s in shapes):
            raise InvalidOptionError(f"--shapes '{item}': give three shapes MIN,OPT,MAX (or one), each whole numbers "
                                     "joined by x, e.g. 1x16,8x128,32x512")
        dims = [tuple(int(d) for d in s.split("x")) for s in shapes]
        if len(dims) == 1:
            dims = dims * 3
        if len({len(d) for d in dims}) != 1:
            raise InvalidOptionError(f"--shapes '{item}': min, opt and max must have the same rank")
        if any(d < 1 for shape in dims for d in shape):
            raise InvalidOptionError(f"--shapes '{item}': every size must be >= 1")
        if name in parsed:
            raise InvalidOptionError(f"--shapes gives '{name}' twice")
        parsed[name] = (dims[0], dims[1], dims[2])
    return parsed


def derive_profile(manifest: Manifest, shapes: Sequence[str] = ()) -> Profile:
    """The profile for ``manifest``'s inputs: ``shapes`` where given, shared symbols from
    them, then defaults for batch and sequence axes; every range checked."""
    specs = manifest.inputs
    given = parse_shapes(shapes)
    unknown = sorted(set(given) - {s.name for s in specs})
    if unknown:
        raise InvalidOptionError(f"--shapes names {', '.join(unknown)}, which the model does not take; its inputs: "
                                 + "; ".join(s.describe() for s in specs))
    symbols: dict[str, tuple[int, int, int, str]] = {}      # symbol -> (min, opt, max, where from)
    for spec in specs:
        if spec.name in given:
            _symbols_from_given(spec, given[spec.name], symbols)
    profiles = []
    for spec in specs:
        if spec.name in given:
            low, opt, high = given[spec.name]
            profiles.append(InputProfile(spec.name, low, opt, high, "--shapes"))
            continue
        dims, sources = [[], [], []], set()
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim > 0:
                for k in range(3):
                    dims[k].append(dim)
                continue
            symbol = str(dim)
            if symbol not in symbols:
                symbols[symbol] = _default_range(manifest, spec, axis, symbol)
            low, opt, high, where = symbols[symbol]
            for k, value in enumerate((low, opt, high)):
                dims[k].append(value)
            sources.add(where)
        profiles.append(InputProfile(spec.name, tuple(dims[0]), tuple(dims[1]), tuple(dims[2]),
                                     ", ".join(sorted(sources)) or "static"))
    for profile, spec in zip(profiles, specs):
        _check(profile, spec)
    return Profile(tuple(profiles))


def _symbols_from_given(spec: TensorSpec, shapes: tuple[Shape, Shape, Shape], symbols: dict) -> None:
    if len(shapes[0]) != len(spec.shape):
        raise InvalidOptionError(f"--shapes gives '{spec.name}' rank {len(shapes[0])}; it has rank "
                                 f"{len(spec.shape)} ({spec.describe()})")
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim > 0:
            continue
        value = tuple(s[axis] for s in shapes)
        seen = symbols.get(str(dim))
        if seen and seen[:3] != value:
            raise InvalidOptionError(f"--shapes gives axis '{dim}' the range {_range(seen[:3])} through {seen[3]} "
                                     f"but {_range(value)} through '{spec.name}'; inputs that share an axis must "
                                     "share its range")
        symbols[str(dim)] = (*value, f"'{spec.name}' from --shapes")


def _range(values) -> str:
    return "/".join(map(str, values))


def _default_range(manifest: Manifest, spec: TensorSpec, axis: int, symbol: str) -> tuple[int, int, int, str]:
    limit = spec.max_shape[axis] if spec.max_shape and axis < len(spec.max_shape) else None
    if symbol in ("batch", "batch_size") or (axis == 0 and symbol == "N"):
        return (*DEFAULT_BATCH, "default batch range")
    if axis == 1 and manifest.processing.get("tokenizer"):
        limits = [v for v in (limit, manifest.processing.get("max_length")) if v]
        longest = min(limits) if limits else DEFAULT_SEQUENCE[2]
        return (1, min(DEFAULT_SEQUENCE[1], longest), longest, "sequence up to the exported max length")
    image = manifest.processing.get("image")
    if image and spec.name == manifest.inputs[0].name and len(spec.shape) == 4:
        layout = image.get("layout", "NCHW")
        spatial = {"NCHW": (2, 3), "NHWC": (1, 2)}[layout]
        if axis in spatial:
            size = image["size"][spatial.index(axis)]
            return (size, size, size, "the exported image size")
    raise InvalidOptionError(f"input '{spec.name}' axis {axis} ('{symbol}') is dynamic and has no range edgeport can "
                             f"derive; give it with --shapes {spec.name}:MIN,OPT,MAX "
                             f"(rank {len(spec.shape)}: {spec.describe()})")


def _check(profile: InputProfile, spec: TensorSpec) -> None:
    if len(profile.min) != len(spec.shape):
        raise InvalidOptionError(f"--shapes gives '{spec.name}' rank {len(profile.min)}; it has rank "
                                 f"{len(spec.shape)} ({spec.describe()})")
    for axis, dim in enumerate(spec.shape):
        low, opt, high = profile.min[axis], profile.opt[axis], profile.max[axis]
        if isinstance(dim, int) and dim > 0 and (low, opt, high) != (dim, dim, dim):
            raise InvalidOptionError(f"'{spec.name}' axis {axis} is fixed at {dim} in the model; --shapes gives "
                                     f"{_range((low, opt, high))}")
        if not low <= opt <= high:
            raise InvalidOptionError(f"'{spec.name}' axis {axis}: min {low}, opt {opt}, max {high} must satisfy "
                                     "min <= opt <= max")
        limit = spec.max_shape[axis] if spec.max_shape and axis < len(spec.max_shape) else None
        if limit is not None and high > limit:
            raise InvalidOptionError(f"'{spec.name}' axis {axis}: max {high} is past what the model supports "
                                     f"({limit}, where its position embeddings end)")
