"""Optimization profiles: min / opt / max input shapes from the manifest (and the recipe).

TensorRT needs, for every dynamic input, the smallest, the typical and the largest shape it will
see. The manifest already records each dynamic axis as ``[min, opt, max]`` — the range the ONNX
graph was verified for — so one profile follows from it directly. A recipe may ask for several
(e.g. a batch-1 latency profile and a batch-8 throughput profile); each must stay inside the
verified range, because nothing outside it was checked against PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UsageError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimization profile: per input, its (min, opt, max) shapes."""

    name: str
    axes: dict[str, tuple[int, int, int]]
    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def covers(self, shapes: dict[str, Shape]) -> bool:
        """True when every given input shape lies inside this profile's [min, max]."""
        for name, shape in shapes.items():
            if name not in self.shapes:
                continue
            low, _, high = self.shapes[name]
            if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
                return False
        return True

    @property
    def static(self) -> bool:
        """All inputs have min == max (CUDA graphs can be captured once and replayed)."""
        return all(low == high for low, _, high in self.shapes.values())

    def to_dict(self) -> dict[str, Any]:
        """The profile as recorded in the engine's build record (axes and min/opt/max shapes per input)."""
        return {"name": self.name, "axes": {k: list(v) for k, v in self.axes.items()},
                "shapes": {k: [list(s) for s in v] for k, v in self.shapes.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapeProfile:
        """Inverse of :meth:`to_dict` (used on the manifest's ``built_with.profiles``)."""
        return cls(name=str(data["name"]), axes={k: tuple(int(x) for x in v) for k, v in data["axes"].items()},  # type: ignore[misc]
                   shapes={k: tuple(tuple(int(x) for x in s) for s in v) for k, v in data["shapes"].items()})  # type: ignore[misc]


def axis_ranges(inputs: list[TensorSpec]) -> dict[str, tuple[int, int, int]]:
    """Every dynamic axis of the inputs with its manifest ``(min, opt, max)``.

    Raises:
        UsageError: An axis has no profile, or two inputs disagree about one axis.
    """
    ranges: dict[str, tuple[int, int, int]] = {}
    for spec in inputs:
        for dim in spec.shape:
            if isinstance(dim, int):
                continue
            bounds = spec.profile.get(dim)
            if not bounds or len(bounds) != 3:
                raise UsageError(f"Input {spec.name} has dynamic axis {dim!r} without a [min, opt, max] profile.",
                                 hint="Re-export the bundle with this edgemm; its manifest records profiles.")
            triple = (int(bounds[0]), int(bounds[1]), int(bounds[2]))
            if ranges.setdefault(dim, triple) != triple:
                raise UsageError(f"Axis {dim!r} has different profiles on different inputs.",
                                 hint="The manifest is inconsistent; re-export the bundle.")
    return ranges


def _check_triple(axis: str, triple: tuple[int, int, int], verified: tuple[int, int, int], where: str) -> None:
    low, opt, high = triple
    if not 1 <= low <= opt <= high:
        raise UsageError(f"{where}: axis {axis!r} must satisfy 1 <= min <= opt <= max, got {list(triple)}.")
    if low < verified[0] or high > verified[2]:
        raise UsageError(
            f"{where}: axis {axis!r} range {low}..{high} leaves the verified range {verified[0]}..{verified[2]}.",
            hint="Profiles must stay inside the shapes the bundle was checked at; re-export with larger limits.",
        )


def build_profiles(inputs: list[TensorSpec], requested: list[dict[str, Any]] | None = None) -> list[ShapeProfile]:
    """Optimization profiles for ``inputs``: the manifest's own, or one per requested table.

    Args:
        inputs: The manifest's graph inputs (with ``profile`` per dynamic axis).
        requested: Recipe / CLI profiles, each ``{"name": ..., axis: [min, opt, max] | int}``;
            axes not named keep the manifest's range; an int means a fixed size.

    Returns:
        At least one :class:`ShapeProfile`.

    Raises:
        UsageError: An unknown axis, a bad triple, or a range outside the verified one.
    """
    verified = axis_ranges(inputs)
    tables = requested or [{"name": "manifest"}]
    profiles: list[ShapeProfile] = []
    names: set[str] = set()
    for i, table in enumerate(tables):
        name = str(table.get("name", f"profile{i}"))
        if name in names:
            raise UsageError(f"Two optimization profiles are called {name!r}.")
        names.add(name)
        axes = dict(verified)
        for axis, value in table.items():
            if axis == "name":
                continue
            if axis not in verified:
                raise UsageError(f"Profile {name!r} names unknown axis {axis!r}.",
                                 hint=f"Dynamic axes of this bundle: {', '.join(verified) or 'none'}.")
            if isinstance(value, int) and not isinstance(value, bool):
                triple = (value, value, value)
            elif isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(x, int) for x in value):
                triple = (int(value[0]), int(value[1]), int(value[2]))
            else:
                raise UsageError(f"Profile {name!r}: axis {axis!r} must be an int or [min, opt, max], got {value!r}.")
            _check_triple(axis, triple, verified[axis], f"Profile {name!r}")
            axes[axis] = triple
        shapes = {spec.name: tuple(tuple(d if isinstance(d, int) else axes[d][k] for d in spec.shape)  # type: ignore[misc]
                                   for k in range(3)) for spec in inputs}
        profiles.append(ShapeProfile(name=name, axes=axes, shapes=shapes))  # type: ignore[arg-type]
    return profiles


def parse_profile_option(text: str) -> dict[str, Any]:
    """``--profile "name=b1;batch=1,1,1;seq=8,32,64"`` → a requested-profile table.

    Raises:
        UsageError: The text is not ``key=value`` pairs separated by ``;``.
    """
    table: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"Cannot read profile {text!r}.",
                             hint='Write it as "name=b1;batch=1,1,1;seq=8,32,64" (min,opt,max per axis).')
        key = key.strip()
        if key == "name":
            table["name"] = value.strip()
            continue
        try:
            numbers = [int(x) for x in value.split(",")]
        except ValueError:
            raise UsageError(f"Profile axis {key!r} must be numbers, got {value!r}.") from None
        if len(numbers) == 1:
            table[key] = numbers[0]
        elif len(numbers) == 3:
            table[key] = numbers
        else:
            raise UsageError(f"Profile axis {key!r} needs one size or min,opt,max; got {value!r}.")
    return table


def pick_profile(profiles: list[ShapeProfile], shapes: dict[str, Shape]) -> int | None:
    """Index of the tightest profile covering ``shapes`` (smallest max volume), or None."""
    best: tuple[int, int] | None = None
    for i, profile in enumerate(profiles):
        if profile.covers(shapes):
            volume = sum(_prod(high) for _, _, high in profile.shapes.values())
            if best is None or volume < best[0]:
                best = (volume, i)
    return None if best is None else best[1]


def _prod(shape: Shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
