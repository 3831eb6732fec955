"""The elements a graph is made of: values (:class:`ValueInfo`), ops (:class:`Op`), the input
(:class:`InputSpec`), the dtypes, :class:`GraphError` and the size helpers.

They sit below both the op table (:mod:`bitflow.ir.ops`, whose shape rules check ops against
values) and :class:`~bitflow.ir.graph.Graph` (which validates itself with the op table), so the
IR's modules form layers: ``nodes -> ops -> graph -> bfn`` (``bitflow.ir.graph`` re-exports
every name here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

INT32_MAX = 2**31 - 1

DTYPES = ("float32", "uint8", "int32", "bits")
PARAM_DTYPES = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "uint64": np.dtype("<u8"),
}


class GraphError(ValueError):
    """A graph is inconsistent (unknown op, missing tensor, wrong shape or dtype, ...)."""


def words_for(bits: int) -> int:
    """``ceil(bits / 64)``: uint64 words holding ``bits`` packed bits."""
    return (bits + 63) // 64


def conv_out(size: int, k: int, stride: int, pad: int) -> int:
    """PyTorch floor-mode output size ``floor((size + 2 pad - k) / stride) + 1`` (<= 0: none)."""
    span = size + 2 * pad - k
    return -1 if span < 0 else span // stride + 1


@dataclass(frozen=True)
class ValueInfo:
    """A value flowing between ops. ``shape`` is per sample (no batch axis).

    For ``dtype == "bits"`` the shape is the *storage* shape in uint64 words; ``channels`` is
    the number of real bits per group and ``groups`` the number of groups in the last axis
    (last axis = ``groups * ceil(channels / 64)`` words). ``planes`` > 1 adds a leading plane
    axis in storage: ``[planes, N, *shape]``.
    """

    dtype: str
    shape: tuple[int, ...]
    channels: int | None = None
    groups: int = 1
    planes: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise GraphError(f"unknown value dtype {self.dtype!r}; expected one of {DTYPES}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.shape or any(s < 1 for s in self.shape):
            raise GraphError(f"value shape must be non-empty with positive sizes, got {self.shape}")
        if self.planes < 1 or self.groups < 1:
            raise GraphError("planes and groups must be >= 1")
        if self.dtype == "bits":
            if self.channels is None or self.channels < 1:
                raise GraphError("a bits value needs channels >= 1")
            if self.shape[-1] != self.groups * words_for(self.channels):
                raise GraphError(
                    f"bits value: last axis {self.shape[-1]} words != groups {self.groups} x "
                    f"ceil({self.channels}/64)"
                )
        elif self.channels is not None or self.groups != 1 or self.planes != 1:
            raise GraphError(
                f"channels/groups/planes apply to bits values only (dtype {self.dtype})"
            )

    @property
    def real_bits(self) -> int:
        """Real positions along the last axis of a bits value (the dot product length)."""
        assert self.channels is not None
        return self.groups * self.channels

    @property
    def last(self) -> int:
        """Logical size of the last axis (channels for bits, else ``shape[-1]``)."""
        return self.real_bits if self.dtype == "bits" else self.shape[-1]

    def storage_shape(self, batch: int) -> tuple[int, ...]:
        s = (batch, *self.shape)
        return (self.planes, *s) if self.planes > 1 else s

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape)}
        if self.dtype == "bits":
            d.update(channels=self.channels, groups=self.groups, planes=self.planes)
        return d

    @staticmethod
    def from_json(d: Any) -> ValueInfo:
        if not isinstance(d, dict):
            raise GraphError("a value description must be a JSON object")
        try:
            return ValueInfo(
                dtype=str(d["dtype"]),
                shape=tuple(_int_list(d["shape"], "shape")),
                channels=None if d.get("channels") is None else _int(d["channels"], "channels"),
                groups=_int(d.get("groups", 1), "groups"),
                planes=_int(d.get("planes", 1), "planes"),
            )
        except KeyError as e:
            raise GraphError(f"value description lacks {e}") from None


def _int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise GraphError(f"{what} must be an integer, got {x!r}")
    return x


def _int_list(x: Any, what: str, n: int | None = None) -> list[int]:
    if not isinstance(x, (list, tuple)):
        raise GraphError(f"{what} must be a list of integers, got {x!r}")
    out = [_int(v, what) for v in x]
    if n is not None and len(out) != n:
        raise GraphError(f"{what} must have {n} entries, got {len(out)}")
    return out


@dataclass
class Op:
    """One operation: ``type`` (native op name), unique ``name``, value names in/out, ``attrs``
    (JSON-serializable), ``params`` (role -> tensor name in ``Graph.tensors``)."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "attrs": dict(self.attrs),
            "params": dict(self.params),
        }

    @staticmethod
    def from_json(d: Any) -> Op:
        if not isinstance(d, dict):
            raise GraphError("an op must be a JSON object")
        try:
            t, name, ins, outs = d["type"], d["name"], d["inputs"], d["outputs"]
        except KeyError as e:
            raise GraphError(f"op lacks field {e}") from None
        attrs, params = d.get("attrs", {}), d.get("params", {})
        if not (isinstance(t, str) and isinstance(name, str)):
            raise GraphError("op type and name must be strings")
        if not (
            isinstance(ins, list)
            and isinstance(outs, list)
            and all(isinstance(v, str) for v in ins + outs)
        ):
            raise GraphError(f"op {name!r}: inputs/outputs must be lists of value names")
        if (
            not isinstance(attrs, dict)
            or not isinstance(params, dict)
            or not all(isinstance(v, str) for v in params.values())
        ):
            raise GraphError(
                f"op {name!r}: attrs must be an object and params map roles to tensor names"
            )
        return Op(
            type=t,
            name=name,
            inputs=list(ins),
            outputs=list(outs),
            attrs=dict(attrs),
            params=dict(params),
        )


@dataclass(frozen=True)
class InputSpec:
    """Network input: float32 NCHW images ``[N, C, H, W]`` with values in ``[0, 1]``.

    ``preprocess``: ``"unit"`` feeds them as float32 (NHWC) to a float first layer; ``"uint8"``
    feeds ``round(255 x)`` clamped to 0..255 as uint8 to a fixed-point first layer.
    """

    channels: int
    height: int
    width: int
    preprocess: str = "unit"
    name: str = "input"

    def __post_init__(self) -> None:
        if min(self.channels, self.height, self.width) < 1:
            raise GraphError("input channels, height and width must be >= 1")
        if self.preprocess not in ("unit", "uint8"):
            raise GraphError(f"input preprocess must be 'unit' or 'uint8', got {self.preprocess!r}")

    @property
    def value(self) -> ValueInfo:
        dt = "float32" if self.preprocess == "unit" else "uint8"
        return ValueInfo(dt, (self.height, self.width, self.channels))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": [self.channels, self.height, self.width],
            "preprocess": self.preprocess,
        }

    @staticmethod
    def from_json(d: Any) -> InputSpec:
        if not isinstance(d, dict):
            raise GraphError("input spec must be a JSON object")
        try:
            c, h, w = _int_list(d["shape"], "input shape", 3)
            return InputSpec(c, h, w, str(d.get("preprocess", "unit")), str(d.get("name", "input")))
        except KeyError as e:
            raise GraphError(f"input spec lacks {e}") from None


__all__ = [
    "DTYPES",
    "INT32_MAX",
    "PARAM_DTYPES",
    "GraphError",
    "InputSpec",
    "Op",
    "ValueInfo",
    "conv_out",
    "words_for",
]
