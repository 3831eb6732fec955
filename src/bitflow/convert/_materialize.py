"""How a :class:`~._core.Pending` becomes the value its consumer reads: sign bits through one
exact BatchShift threshold per lane (``threshold_bits``; with a ReActNet RSign shift; XNOR-Net++'s
per-position ``threshold_bits_hw``), or float32 (the XNOR-Net style float chain, ``mode="xnor"``,
and values with several consumers)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import batchshift as bs
from ._core import Pending, _bn_params, _ConverterBase, _nchw_to_nhwc_perm
from ._ties import _count_level_ties_int, _count_ties
from ._trace import unsupported


class _Materialize(_ConverterBase):
    def _to_bits_table(
        self, p: Pending, shift: np.ndarray | None, consumer: str
    ) -> tuple[str, tuple[int, int, int] | None]:
        """XNOR-Net++ (``z = Gamma[y, x, o] d`` on the int32 ``d``): one exact threshold per
        (position, channel), ``threshold_bits_hw``, then bit pools and a flatten.

        Every lane is BatchShift's rule with ``alpha = |Gamma|`` (a negative ``Gamma`` runs the
        rule on ``-d`` and flips the direction; ``Gamma = 0`` is a constant). Max-pools commute
        with the decisions as long as the BatchNorm is monotone the same way in every channel
        (``max_p sign(BN(z_p)) = sign(BN(max_p z_p))`` for an increasing BN: an AND of the bits,
        OR for a decreasing one), whatever the sign of ``Gamma_p``: the pool acts on ``z``. A
        BatchNorm1d after the pool and flatten (per pooled feature) needs non-overlapping
        pooling windows, so that each position belongs to one feature."""
        assert p.pos_scale is not None and p.chw is not None and p.alpha is not None
        g = p.pos_scale.astype(np.float32)
        h, w, o = g.shape
        where = consumer or p.producer
        if shift is not None:
            raise unsupported(where, "RSign", "an RSign after an XNOR-Net++ layer (not yet)")
        if p.flatten == "before_bn" and p.bn is not None:
            if len(p.pools) > 1:
                raise unsupported(where, "XnorPPConv2d", "several pools before a BatchNorm1d")
            hh, ww, sy, sx = h, w, 1, 1
            for _name, a in p.pools:
                (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
                if (kh, kw) != (sh, sw) or (ph, pw) != (0, 0):
                    raise unsupported(
                        where,
                        "XnorPPConv2d",
                        "a BatchNorm1d after an overlapping or padded pool (each position must "
                        "belong to one pooled feature)",
                    )
                hh, ww, sy, sx = (h - kh) // sh + 1, (w - kw) // sw + 1, sh, sw
            ys = np.minimum(np.arange(h) // sy, hh - 1)
            xs = np.minimum(np.arange(w) // sx, ww - 1)
            feat = (
                np.arange(o)[None, None, :] * (hh * ww) + ys[:, None, None] * ww + xs[None, :, None]
            ).reshape(-1)  # lane (y, x, o) -> NCHW pooled feature (positions cut by the pool: any)
        elif p.flatten is None or p.flatten == "after_bn" or p.bn is None:
            feat = np.tile(np.arange(o), h * w)
        else:  # pragma: no cover - the flatten modes are exhaustive
            raise AssertionError(p.flatten)
        bnp = _bn_params(p.bn_name or "", p.bn) if p.bn is not None else bs.BNParams.identity(o)
        lane_bn = bs.BNParams(
            mean=bnp.mean[feat],
            var=bnp.var[feat],
            eps=bnp.eps,
            gamma=bnp.gamma[feat],
            beta=bnp.beta[feat],
        )
        gl = g.reshape(-1).astype(np.float64)
        ch = np.tile(np.arange(o), h * w)
        assert p.lo is not None and p.hi is not None
        lo, hi = np.asarray(p.lo, np.int64)[ch], np.asarray(p.hi, np.int64)[ch]
        bias = np.asarray(p.bias if p.bias is not None else np.zeros(o), np.float32)[ch]
        neg, zero = gl < 0, gl == 0
        th = bs.int_thresholds(
            lo=np.where(zero, 0, np.where(neg, -hi, lo)),
            hi=np.where(zero, 0, np.where(neg, -lo, hi)),
            bn=lane_bn,
            alpha=np.where(zero, 1.0, np.abs(gl)).astype(np.float32),
            bias=bias,
            relu=p.relu,
            channels=gl.size,
        )
        kind = th.kind.copy()
        thr = th.thr.astype(np.int64)
        flip = neg & np.isin(kind, (bs.GE, bs.LE))
        thr = np.where(flip, -thr, thr)
        kind = np.where(flip, -kind, kind)  # GE (+1) <-> LE (-1); constants stay
        direction = np.where(kind == bs.LE, -1, np.where(kind == bs.CONST_NEG, -1, 1))
        final = bs.Thresholds(
            thr=thr.astype(np.int32), direction=direction.astype(np.int8), kind=kind, tau=th.tau
        )
        gam = lane_bn.gamma
        pool_op = "and" if np.all(gam >= 0) else ("or" if np.all(gam <= 0) else None)
        if p.pools and pool_op is None:
            raise unsupported(
                where,
                "XnorPPConv2d",
                "max-pooling after per-position scales needs a BatchNorm of one direction "
                "(all gamma >= 0 or all <= 0)",
            )

        def decide(d: np.ndarray) -> np.ndarray:  # PyTorch's float32 pipeline, per lane
            with torch.no_grad():
                y = torch.from_numpy(np.ascontiguousarray(d, np.float32)) * torch.from_numpy(
                    gl.astype(np.float32)
                )
                if np.any(bias != 0):
                    y = y + torch.from_numpy(bias)
                if p.relu:
                    y = torch.relu(y)
                if p.bn is not None:
                    y = F.batch_norm(
                        y,
                        torch.from_numpy(lane_bn.mean),
                        torch.from_numpy(lane_bn.var),
                        torch.from_numpy(lane_bn.gamma),
                        torch.from_numpy(lane_bn.beta),
                        False,
                        0.0,
                        float(lane_bn.eps),
                    )
                return (y >= 0).numpy()

        ties = _count_ties(p, final, None, None, lo, hi, gl.size, None, decide)
        tname = f"{p.bn_name or p.producer}.threshold"
        x = self.b.add(
            "threshold_bits_hw",
            p.value,
            name=tname,
            attrs={"ties": ties, "source": p.bn_name or p.producer},
            params={
                "thr": final.thr.reshape(h, w, o),
                "direction": final.direction.reshape(h, w, o),
            },
        )
        self.ties[tname] = ties
        for name, a in p.pools:
            assert pool_op is not None
            x = self.b.add("maxpool_bits", x, name=name, attrs={**a, "op": pool_op})
        chw = None
        if p.flatten is not None:
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = self._pooled_chw(p)
        return x, chw

    def to_bits(
        self, p: Pending, consumer: str, shift: np.ndarray | None = None
    ) -> tuple[str, tuple[int, int, int] | None]:
        """Materialize ``p`` as packed bits feeding ``consumer``; returns (value, chw of a flatten).

        ``shift``: the consumer's RSign ``beta`` (float32, one per input channel or, after a
        flatten, per input feature in PyTorch's order): the bits are ``sign(u - beta)``."""
        if self.mode == "xnor":
            return self._to_bits_xnor(p, consumer, shift)
        if p.stream is not None and p.flatten is None and not p.pools:
            # the stream's signs, computed once for all readers with the same shift
            key = p.value if shift is None else f"{p.value}|rsign:{shift.tobytes().hex()}"
            if key not in self.stream_bits:
                self.stream_bits[key] = self._to_bits_int(p, shift, consumer)[0]
            return self.stream_bits[key], None
        return self._to_bits_int(p, shift, consumer)

    def _boundaries(
        self, p: Pending, shift: np.ndarray | None, lanes: int, consumer: str
    ) -> Fraction | list[Fraction]:
        """The exact decision boundary of every lane: 0 (a plain sign) or RSign's ``beta``.

        ``sign(u - beta)`` in PyTorch is ``fl(u - beta) >= 0`` (``sign(0) = +1``); an IEEE
        float32 difference is 0 only when ``u == beta`` and otherwise has the sign of the exact
        ``u - beta``, so it is ``u >= beta`` exactly: the boundary ``beta`` of the lane's
        predicate ``BN(z) >= b`` (:mod:`.batchshift`), one exact rational per lane."""
        if shift is None:
            return Fraction(0)
        if shift.shape != (lanes,):
            raise unsupported(
                consumer,
                "RSign",
                f"its {shift.size} shifts do not match the {lanes} thresholds of its input "
                "(an RSign after a per-channel BatchNorm and a flatten)",
            )
        if not np.all(np.isfinite(shift)):
            raise ValueError(f"layer {consumer!r}: RSign beta contains NaN or infinity")
        return [Fraction(float(b)) for b in shift]

    def _to_bits_int(
        self,
        p: Pending,
        shift: np.ndarray | None = None,
        consumer: str = "",
        *,
        boundary: bs.Boundary | None = None,
        layer: nn.Module | None = None,
    ) -> tuple[str, tuple[int, int, int] | None]:
        """Sign bits ``BN(...) >= 0``; with ``shift`` (the consumer's RSign ``beta``, see
        :meth:`to_bits`) ``BN(...) >= beta`` per lane; with ``boundary`` (a 1-bit MBBN quantizer
        of ``layer``, the consumer) the quantizer's own step ``BN(...) >= b`` / ``> b``."""
        where = consumer or p.producer
        if boundary is not None and shift is not None:  # pragma: no cover - no caller does both
            raise AssertionError("an RSign shift and an MBBN quantizer step on the same bits")
        if p.pos_scale is not None:
            if boundary is not None:
                raise unsupported(
                    where, "XnorPPConv2d", "an MBBN quantizer after an XNOR-Net++ layer (not yet)"
                )
            return self._to_bits_table(p, shift, consumer)
        per_feature = self._per_feature(p)
        alpha, bias, lo, hi, bnp, lanes = self._lane_arrays(p)
        bound: Fraction | bs.Boundary | list[Fraction] = (
            boundary if boundary is not None else self._boundaries(p, shift, lanes, where)
        )
        if p.is_int:
            th = bs.int_thresholds(
                lo=lo,
                hi=hi,
                bn=bnp,
                alpha=alpha,
                bias=bias,
                relu=p.relu,
                channels=lanes,
                boundary=bound,
            )
        else:
            th = bs.float_thresholds(bnp, relu=p.relu, channels=lanes, boundary=bound)
        ties = _count_ties(p, th, alpha, bias, lo, hi, lanes, shift, layer=layer)
        return self._threshold_op(
            p,
            "threshold_bits" if p.is_int else "threshold_f32_bits",
            "threshold",
            th.thr if p.is_int else th.thr.astype(np.float32),
            th.direction,
            ties,
            bit_pool=None if per_feature else th.pool_op,
        )

    def _int_levels(
        self, p: Pending, boundaries: Any, layer: nn.Module, levels_of: Any = None
    ) -> tuple[bs.LevelThresholds, int]:
        """The exact level thresholds of an integer producer (one
        :func:`~.batchshift.level_int_thresholds` rule per lane) and their ties against
        PyTorch's levels of ``layer``'s input quantizer (``levels_of``: another level function)."""
        alpha, bias, lo, hi, bnp, lanes = self._lane_arrays(p)
        th = bs.level_int_thresholds(
            lo=lo,
            hi=hi,
            bn=bnp,
            boundaries=boundaries,
            alpha=alpha,
            bias=bias,
            relu=p.relu,
            channels=lanes,
        )
        return th, _count_level_ties_int(p, th, alpha, bias, lo, hi, lanes, layer, levels_of)

    def _threshold_op(
        self,
        p: Pending,
        kind: str,
        suffix: str,
        thr: np.ndarray,
        direction: np.ndarray,
        ties: int,
        attrs: dict[str, Any] | None = None,
        *,
        bit_pool: str | None = None,
    ) -> tuple[str, tuple[int, int, int] | None]:
        """The threshold op ``kind`` (named ``{BN or producer}.{suffix}``) on ``p``'s value:
        max-pools first (on the int32 / float32 value; with ``bit_pool`` ``"and"`` / ``"or"``
        on the bits after it instead), the lanes of a per-feature BatchNorm1d permuted to the
        engine's NHWC order after the flatten, else a flatten after the op. Returns (value, chw
        of a flatten).

        ``ties``: for integer thresholds the reachable integers where PyTorch disagrees; for
        float ones the float32 inputs next to a threshold where PyTorch's float32 BN rounds the
        other way (``ties`` / ``float_ties`` attribute, and the provenance sums)."""
        per_feature = self._per_feature(p)
        x = p.value
        if bit_pool is None:
            for name, a in p.pools:
                x = self.b.add("maxpool_i32" if p.is_int else "maxpool_f32", x, name=name, attrs=a)
        chw = None
        if per_feature:
            pooled = self._pooled_chw(p)
            assert pooled is not None
            perm = _nchw_to_nhwc_perm(*pooled)
            thr, direction = thr[perm], direction[perm]
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = pooled
        tname = f"{p.bn_name or p.producer}.{suffix}"
        x = self.b.add(
            kind,
            x,
            name=tname,
            attrs={
                **(attrs or {}),
                "ties" if p.is_int else "float_ties": ties,
                "source": p.bn_name or p.producer,
            },
            params={"thr": thr, "direction": direction},
        )
        (self.ties if p.is_int else self.float_ties)[tname] = ties
        if bit_pool is not None:
            for name, a in p.pools:
                x = self.b.add("maxpool_bits", x, name=name, attrs={**a, "op": bit_pool})
        if p.flatten is not None and not per_feature:
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = self._pooled_chw(p)
        return x, chw

    def _float_chain(self, p: Pending) -> tuple[str, tuple[int, int, int] | None]:
        """XNOR-Net style float chain: alpha*x + b, ReLU, pools, [flatten], BN affine, [flatten]."""
        x = p.value
        if p.pos_scale is not None:
            # XNOR-Net++ before a float value: PyTorch's conv(sign X, sign W) * Gamma, the
            # integer sum times Gamma[y, x, o] rounded once (the layer has no alpha, no bias)
            assert p.is_int and p.alpha is not None
            if np.any(p.alpha != 1) or (p.bias is not None and np.any(p.bias != 0)):
                raise unsupported(
                    p.producer, "XnorPPConv2d", "a scaled weight quantizer or a bias beside Gamma"
                )
            x = self.b.add(
                "scale_hw",
                x,
                name=f"{p.producer}.scale",
                params={"scale": np.ascontiguousarray(p.pos_scale, np.float32)},
                attrs={"source": p.producer},
            )
        elif p.is_int:
            assert p.alpha is not None and p.bias is not None
            x = self.b.add(
                "scale_bias",
                x,
                name=f"{p.producer}.scale",
                params={"scale": p.alpha, "bias": p.bias},
            )
        if p.relu:
            x = self.b.add("relu_f32", x, name=f"{p.producer}.relu")
        for name, a in p.pools:
            x = self.b.add("maxpool_f32", x, name=name, attrs=a)
        chw = self._pooled_chw(p)
        if p.flatten == "before_bn":
            x = self.b.add("flatten", x, name=p.flatten_name)
        if p.bn is not None:
            bnp = _bn_params(p.bn_name or "", p.bn)
            s64 = bnp.gamma.astype(np.float64) / np.sqrt(bnp.var.astype(np.float64) + bnp.eps)
            scale = s64.astype(np.float32)
            shift = (bnp.beta.astype(np.float64) - bnp.mean.astype(np.float64) * s64).astype(
                np.float32
            )
            if p.flatten == "before_bn" and chw is not None:
                perm = _nchw_to_nhwc_perm(*chw)
                scale, shift = scale[perm], shift[perm]
            # |beta| + |mean * s|: PyTorch's BN rounds (x - mean) s + beta, whose terms can be far
            # larger than the folded bias; the float error bound of verify needs their size
            terms = float(
                np.max(
                    np.abs(bnp.beta.astype(np.float64)) + np.abs(bnp.mean.astype(np.float64) * s64),
                    initial=0.0,
                )
            )
            x = self.b.add(
                "affine_f32",
                x,
                name=f"{p.bn_name}",
                params={"scale": scale, "bias": shift},
                attrs={"source": p.bn_name, "bn_terms_abs": terms},
            )
        if p.flatten == "after_bn":
            x = self.b.add("flatten", x, name=p.flatten_name)
        return x, (chw if p.flatten is not None else None)

    def _to_bits_xnor(
        self, p: Pending, consumer: str, shift: np.ndarray | None = None
    ) -> tuple[str, tuple[int, int, int] | None]:
        x, chw = self._float_chain(p)
        if shift is None:
            x = self.b.add("bitpack", x, name=f"{consumer}.sign", attrs={"source": consumer})
            return x, chw
        # RSign: fl(u - beta) >= 0 is u >= beta exactly (see _boundaries), on the float value
        n = self.b.values[x].shape[-1]
        if shift.shape != (n,) or chw is not None:
            raise unsupported(
                consumer, "RSign", "an RSign after a flatten converts in mode='bitflow' only"
            )
        x = self.b.add(
            "threshold_f32_bits",
            x,
            name=f"{consumer}.rsign",
            attrs={"float_ties": 0, "source": consumer},
            params={"thr": shift.astype(np.float32), "direction": np.ones(n, np.int8)},
        )
        return x, chw


def _float_pending(
    cv: _ConverterBase, value: str, producer: str, chw: tuple[int, int, int] | None
) -> Pending:
    v = cv.b.values[value]
    return Pending(value, producer, False, v.shape[-1], chw)


def _materialize(cv: _Materialize, p: Pending, where: str) -> Pending:
    """``p`` as a float32 value (XNOR-Net style float chain: ``alpha x + b``, ReLU, pools, BN
    affine): the residual stream as published, for adds, average pools, concatenations and
    values with several consumers."""
    if p.flatten is not None:
        raise unsupported(
            where, "flattened value", "a flattened value can only feed one linear layer"
        )
    x, _ = cv._float_chain(p)
    return _float_pending(cv, x, p.producer, cv._pooled_chw(p))


def _as_float(cv: _Materialize, p: Pending, where: str) -> Pending:
    """``p`` itself when it already is a plain float32 value, else :func:`_materialize`."""
    return _materialize(cv, p, where) if (p.is_int or p.relu or p.pools or p.bn is not None) else p
