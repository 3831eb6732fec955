"""Lowering rules of the 1-bit chain (BitFlow-Net Sec. III): the float / int8 first layer,
binary conv and dense layers on packed bits, the float classifier and a binary last layer's
output scale."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..ir.bits import pack_bits
from ._core import Pending, _conv_attrs, _conv_bias, _f32, _nhwc_columns
from ._materialize import _Materialize
from ._trace import Step


class _ChainRules(_Materialize):
    # ----------------------------------------------------------------- producers
    def first_layer(self, step: Step, x: str) -> Pending:
        m = step.module
        assert isinstance(m, nn.Conv2d)
        self._check_conv(step.name, m)
        c_in = self.b.values[x].shape[2]
        if m.in_channels != c_in:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_channels} input channels, the input has {c_in}"
            )
        attrs = {"stride": list(m.stride), "padding": list(m.padding), "source": step.name}
        if step.kind == "int8_first":
            with torch.no_grad():
                q, s = m.quantized_weight()  # type: ignore[operator]
                # integer_output: the model itself returns the integer accumulator (FixedPointBN next)
                alpha = (
                    np.ones(m.out_channels, np.float32)
                    if getattr(m, "integer_output", False)
                    else _f32(s / 255.0)
                )
            qn = q.detach().numpy()
            if not np.array_equal(qn, np.round(qn)) or np.abs(qn).max(initial=0) > 127:
                raise ValueError(
                    f"layer {step.name!r}: quantized weights are not integers in [-127, 127]"
                )
            w = np.ascontiguousarray(qn.transpose(0, 2, 3, 1)).astype(np.int8)
            out = self.b.add("conv2d_u8i8", x, name=step.name, attrs=attrs, params={"w": w})
            q64 = qn.reshape(qn.shape[0], -1).astype(np.int64)
            lo = 255 * np.minimum(q64, 0).sum(1)
            hi = 255 * np.maximum(q64, 0).sum(1)
            return self._accumulator(out, step.name, alpha, _conv_bias(m), lo, hi)
        w32 = _f32(m.weight)
        params = {"w": np.ascontiguousarray(w32.transpose(0, 2, 3, 1))}
        bias = _conv_bias(m)
        if m.bias is not None:
            params["bias"] = bias
        out = self.b.add("conv2d_f32", x, name=step.name, attrs=attrs, params=params)
        fan = w32[0].size
        # standard float32 summation bound: |err| <= fan_in * u * (sum |w| * max|x| + |b|), x in [0,1]
        err = (
            fan
            * float(np.finfo(np.float32).eps)
            * (np.abs(w32).reshape(w32.shape[0], -1).sum(1) + np.abs(bias))
        )
        return Pending(
            out, step.name, False, m.out_channels, self._chw(out), err_bound=err.astype(np.float64)
        )

    def binary_conv(self, step: Step, bits: str) -> Pending:
        m = step.module
        assert isinstance(m, nn.Conv2d)
        self._check_conv(step.name, m)
        b, alpha = self._binary_weights(step.name, m)
        vin = self.b.values[bits]
        if m.in_channels != vin.channels:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_channels} channels, gets {vin.channels}"
            )
        w = pack_bits(b.transpose(0, 2, 3, 1) < 0)
        attrs = _conv_attrs(step.name, m, pad_value=int(getattr(m, "pad_value", 0)))
        out = self.b.add("bconv2d", bits, name=step.name, attrs=attrs, params={"w": w})
        n = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        o = m.out_channels
        return self._accumulator(
            out, step.name, alpha, _conv_bias(m), np.full(o, -n), np.full(o, n)
        )

    def binary_linear(self, step: Step, bits: str, chw: tuple[int, int, int] | None) -> Pending:
        m = step.module
        assert isinstance(m, nn.Linear)
        b, alpha = self._binary_weights(step.name, m)
        vin = self.b.values[bits]
        if m.in_features != vin.real_bits:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_features} features, gets {vin.real_bits}"
            )
        if chw is not None:  # columns from PyTorch's NCHW flatten order to the engine's NHWC order
            c, h, w_ = chw
            b4 = b.reshape(b.shape[0], c, h, w_).transpose(0, 2, 3, 1)  # [O, H, W, C]
            if vin.groups > 1:
                packed = pack_bits(b4 < 0).reshape(b.shape[0], -1)  # per-pixel word padding
            else:
                packed = pack_bits(b4.reshape(b.shape[0], -1) < 0)
        else:
            packed = pack_bits(b < 0)
        attrs: dict[str, Any] = {"k_bits": m.in_features, "source": step.name}
        if chw is not None:
            attrs["input_chw"] = list(chw)  # PyTorch (C, H, W) the features were flattened from
        out = self.b.add("bdense", bits, name=step.name, attrs=attrs, params={"w": packed})
        bias = _f32(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
        n, o = m.in_features, m.out_features
        return self._accumulator(out, step.name, alpha, bias, np.full(o, -n), np.full(o, n))

    def float_linear(self, p: Pending, step: Step) -> str:
        m = step.module
        assert isinstance(m, nn.Linear)
        x, chw = self._float_chain(p)
        w = _f32(m.weight)
        if w.shape[1] != self.b.values[x].shape[0]:
            raise ValueError(
                f"layer {step.name!r} expects {w.shape[1]} features, gets {self.b.values[x].shape[0]}"
            )
        if chw is not None:
            w = _nhwc_columns(w, chw)
        params = {"w": np.ascontiguousarray(w)}
        if m.bias is not None:
            params["bias"] = _f32(m.bias)
        return self.b.add(
            "dense_f32", x, name=step.name, params=params, attrs={"source": step.name}
        )

    def scale_output(self, p: Pending, scale: float | None, name: str) -> str:
        """Binary last layer: logits = (x * alpha + b) * s, exactly as PyTorch rounds it (a
        real-input binary layer's value is already float: ``x * alpha + b`` applied)."""
        if p.is_int:
            assert p.alpha is not None and p.bias is not None
            x = self.b.add(
                "scale_bias",
                p.value,
                name=f"{p.producer}.scale",
                params={"scale": p.alpha, "bias": p.bias},
            )
        else:
            x = p.value
        if scale is not None:
            n = p.channels
            x = self.b.add(
                "affine_f32",
                x,
                name=name,
                params={"scale": np.full(n, scale, np.float32), "bias": np.zeros(n, np.float32)},
                attrs={"source": name},
            )
        return x
