"""MCN models (Wang et al., "Modulated Convolutional Networks"): Wide ResNets and the MNIST net.

Widths count feature *maps*; with ``K`` planes (``planes``, default 4) an MCconv layer of ``s``
maps has ``s*K`` channels (Sec. III-C). Variants (registered names):

=====================  =====================================================================
``mcn_*``              MCN: binarized filters, full M-Filters, real activations (W1/A32)
``mcn1_*``             MCN-1: each M plane replaced by its mean (Sec. III-E)
``umcn_*``             U-MCN: unbinarized filters, softmax loss only
``mcn_xnor_*``         MCN-XNOR (*bitflow's variant, not the paper's*): ``BN -> sign -> MCconv``,
                       binary activations, full M
``mcn1_xnor_*``        MCN-XNOR with MCN-1 modulation (ours): converts to bconv + thresholds
``wrn`` / ``mcn_mnist_float``  the full-precision twins (``nn.Conv2d``, ``s`` channels per
                       stage, no planes), as Table II's WRN baseline
=====================  =====================================================================

``mcn_wrn`` (Sec. IV, Fig. 4): a ``depth = 6n + 2`` WRN (``n`` basic blocks per stage),
widths ``s0-s1-s2-s3`` (stem, three stages; strides 1, 2, 2), pre-activation basic blocks
``BN -> ReLU -> MCconv -> BN -> ReLU -> MCconv`` plus the shortcut (a 1x1 MCconv where the shape
changes), then ``BN -> ReLU -> global average pool -> FC``. The MCN-XNOR blocks are
``BN -> sign -> MCconv -> BN -> sign -> MCconv`` (bitflow's order) with shortcut
``BN -> sign -> 1x1 MCconv`` where the shape changes. The first layer sees the input replicated
``K`` times (Sec. III-C). With ``in_channels=3`` and the four Table II widths the binary
parameter counts are 1.08 M / 4.30 M / 17.21 M / 17.28 M (paper: 1.1 / 4.3 / 17.1 / 17.2).

``mcn_mnist`` (Sec. IV-D1: four MCconv layers and one FC; the paper's Fig. 5 details are not in
its text, so the widths are ours): ``widths`` maps ``w1..w4`` (3x3, padding 1), ReLU after every
conv, 2x2 max-pool after convs 2-4 (28 -> 14 -> 7 -> 3), dropout before the FC.

Training extras (:class:`~bitflow.nn.mcn.MCNTraining`) are exposed as methods the trainer calls
(``param_groups``, ``extra_loss``, ``after_step``, ``on_epoch_start``); options ``theta``
(filter and projection loss), ``lam`` (center loss), ``m_lr_ratio`` (``eta_2 / eta_1``),
``lr_decay_c`` / ``lr_decay_m`` (lambda_1, lambda_2 per epoch), ``kmeans_every`` (``N``),
``centers`` (``U``), ``symmetric``, ``act`` (``"float"``: real activations as in the paper;
``"u8"``: W1/A8, every MCconv after the first reads uint8 codes of
:class:`~bitflow.nn.mcn.UInt8Act` on the grid ``2^-act_frac``; then no ReLU precedes an MCconv,
the quantizer clamps at 0, and ``mcn_mnist`` pools before its BatchNorms; see docs/mcn.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.mcn import CenterLoss, MCConv2d, MCNTraining, mc_layers
from ._factory import register_model

TABLE2_WIDTHS = ((16, 16, 32, 64), (16, 32, 64, 128), (32, 64, 128, 256), (64, 64, 128, 256))
TABLE2_PARAMS_M = (1.1, 4.3, 17.1, 17.2)

_VARIANTS = {
    # name: (MCConv2d variant, binary activations)
    "mcn": ("mcn", False),
    "mcn1": ("mcn1", False),
    "umcn": ("umcn", False),
    "mcn_xnor": ("mcn", True),
    "mcn1_xnor": ("mcn1", True),
}


class MCNNet(nn.Module):
    """``features -> head`` with the MCN training hooks; ``features``' output (flattened) is the
    center-loss feature ``f_m`` (Eq. 3.8: the last conv layer's feature map)."""

    def __init__(
        self,
        features: nn.Module,
        head: nn.Sequential,
        *,
        num_classes: int,
        feature_dim: int,
        binary: bool,
        theta: float = 5e-4,
        lam: float = 1e-3,
        m_lr_ratio: float = 0.1,
        lr_decay_c: float = 1.0,
        lr_decay_m: float = 1.0,
        kmeans_every: int = 10,
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        lam = lam if binary else 0.0
        self.center_loss = CenterLoss(num_classes, feature_dim) if lam > 0 else None
        self._mcn = MCNTraining(
            self,
            theta=theta if binary else 0.0,
            lam=lam,
            center=self.center_loss,
            m_lr_ratio=m_lr_ratio,
            lr_decay_c=lr_decay_c,
            lr_decay_m=lr_decay_m,
            kmeans_every=kmeans_every,
        )

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        if self.training and self.center_loss is not None:
            self._mcn.features = f.flatten(1)
        return self.head(f)  # type: ignore[no-any-return]

    # ---- hooks read by bitflow.train (see the trainer's docstring)
    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return self._mcn.param_groups(lr)

    def extra_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return self._mcn.extra_loss(logits, y)

    def after_step(self, opt: torch.optim.Optimizer | None = None) -> None:
        self._mcn.after_step(opt)

    def on_epoch_start(self, epoch: int) -> None:
        self._mcn.on_epoch_start(epoch)

    def binary_parameters(self) -> int:
        """Number of binarized weights (elements of every ``C^``; Table II's count)."""
        return sum(m.binary_parameters() for m in mc_layers(self).values() if m.binary)


def _conv(
    variant: str,
    cin: int,
    cout: int,
    k: int,
    stride: int,
    *,
    planes: int,
    first: bool,
    centers: int,
    symmetric: bool,
    act: str = "float",
    act_frac: int = 5,
) -> nn.Module:
    if variant == "float":
        return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    v, xnor = _VARIANTS[variant]
    iq = "ste_sign" if xnor else ("u8" if act == "u8" else None)
    return MCConv2d(
        cin,
        cout,
        k,
        stride,
        k // 2,
        planes=planes,
        variant=v,
        centers=centers,
        symmetric=symmetric,
        input_quantizer=None if first else iq,
        replicate_input=first,
        act_frac=act_frac,
    )


class _PreActBlock(nn.Module):
    """WRN pre-activation basic block (Fig. 4): ``BN-ReLU-conv-BN-ReLU-conv + shortcut``; the
    MCN-XNOR form replaces each ReLU by the sign inside the next MCconv."""

    def __init__(self, variant: str, cin: int, cout: int, stride: int, ch: int, **kw: Any) -> None:
        super().__init__()
        self.xnor = variant in ("mcn_xnor", "mcn1_xnor")
        self.bn1 = nn.BatchNorm2d(cin * ch)
        self.conv1 = _conv(variant, cin, cout, 3, stride, first=False, **kw)
        self.bn2 = nn.BatchNorm2d(cout * ch)
        self.conv2 = _conv(variant, cout, cout, 3, 1, first=False, **kw)
        # W1/A8 (act=u8): every ReLU here feeds an MCconv whose uint8 quantizer clamps at 0
        self.relu: nn.Module = (
            nn.Identity() if kw.get("act") == "u8" and variant != "float" else nn.ReLU()
        )
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            sc = _conv(variant, cin, cout, 1, stride, first=False, **kw)
            self.shortcut = nn.Sequential(nn.BatchNorm2d(cin * ch), sc) if self.xnor else sc

    def forward(self, x: Tensor) -> Tensor:
        if self.xnor:
            y = self.conv2(self.bn2(self.conv1(self.bn1(x))))
            return y + (x if self.shortcut is None else self.shortcut(x))
        o = self.relu(self.bn1(x))
        y = self.conv2(self.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


def _kw(kw: dict[str, Any], planes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword options into the MCconv layer options (defaults filled in) and training
    options."""
    layer: dict[str, Any] = {
        k: kw.pop(k) for k in ("centers", "symmetric", "act", "act_frac") if k in kw
    }
    act = layer.get("act", "float")
    if act not in ("float", "u8"):
        raise ValueError(f"act must be 'float' (W1/A32, the paper) or 'u8' (W1/A8), got {act!r}")
    train: dict[str, Any] = {
        k: kw.pop(k)
        for k in ("theta", "lam", "m_lr_ratio", "lr_decay_c", "lr_decay_m", "kmeans_every")
        if k in kw
    }
    if kw:
        raise TypeError(f"unexpected options {sorted(kw)}")
    ckw = {
        "planes": planes,
        "centers": layer.get("centers", 2),
        "symmetric": layer.get("symmetric", True),
        "act": act,
        "act_frac": int(layer.get("act_frac", 5)),
    }
    return ckw, train


def _widths(widths: Sequence[int] | str) -> list[int]:
    """``widths`` as 4 positive ints ``s0-s1-s2-s3``: a sequence, or the text ``"16-16-32-64"``
    / ``"16,16,32,64"`` (the command line's ``--model-arg widths=16,16,32,64`` gives a list)."""
    parts: Sequence[Any] = (
        widths.replace(",", "-").split("-") if isinstance(widths, str) else list(widths)
    )
    try:
        w = [int(v) for v in parts]
        ok = len(w) == 4 and all(v > 0 and v == float(p) for v, p in zip(w, parts, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "widths must be 4 positive integers s0-s1-s2-s3 (e.g. --model-arg widths=16,16,32,64 "
            f"or widths=16-16-32-64), got {widths!r}"
        )
    return w


def build_wrn(
    variant: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    depth: int = 20,
    widths: Sequence[int] | str = (16, 16, 32, 64),
    planes: int = 4,
    **kw: Any,
) -> MCNNet:
    """WRN of ``depth = 6n + 2`` with MCconv (``variant`` in mcn, mcn1, umcn, mcn_xnor, mcn1_xnor)
    or ``nn.Conv2d`` (``"float"``, the WRN twin); see the module docstring."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"depth must be 6n + 2 (8, 14, 20, 26, ...), got {depth}")
    s0, *stages = _widths(widths)
    n = (depth - 2) // 6
    ckw, train_kw = _kw(dict(kw), planes)
    ch = 1 if variant == "float" else planes
    mods: list[nn.Module] = [_conv(variant, in_channels, s0, 3, 1, first=True, **ckw)]
    cin = s0
    for i, w in enumerate(stages):
        for b in range(n):
            mods.append(
                _PreActBlock(variant, cin, w, (1 if i == 0 else 2) if b == 0 else 1, ch, **ckw)
            )
            cin = w
    mods += [nn.BatchNorm2d(cin * ch), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    head = nn.Sequential(nn.Linear(cin * ch, num_classes))
    model = MCNNet(
        nn.Sequential(*mods),
        head,
        num_classes=num_classes,
        feature_dim=cin * ch,
        binary=variant not in ("float", "umcn"),
        **train_kw,
    )
    _attrs(model, variant, in_channels, image_size, num_classes)
    return model


def build_mnist(
    variant: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    widths: Sequence[int] | str = (8, 16, 32, 64),
    planes: int = 4,
    dropout: float = 0.5,
    **kw: Any,
) -> MCNNet:
    """Four MCconv layers and one FC (Sec. IV-D1); see the module docstring."""
    w = _widths(widths)
    ckw, train_kw = _kw(dict(kw), planes)
    ch = 1 if variant == "float" else planes
    xnor = variant in ("mcn_xnor", "mcn1_xnor")
    u8 = ckw["act"] == "u8" and variant != "float" and not xnor
    mods: list[nn.Module] = [_conv(variant, in_channels, w[0], 3, 1, first=True, **ckw)]
    if not xnor:
        mods.append(nn.BatchNorm2d(w[0] * ch))
    if not u8:  # W1/A8: the uint8 quantizer's clamp at 0 is the ReLU
        mods.append(nn.ReLU())
    size = image_size
    for i in range(1, 4):
        if xnor:
            mods += [
                nn.BatchNorm2d(w[i - 1] * ch),
                _conv(variant, w[i - 1], w[i], 3, 1, first=False, **ckw),
                nn.ReLU(),
            ]
        elif u8:
            # W1/A8: pool the conv output before its BatchNorm, so that the max-pool runs on the
            # integer accumulator and BN -> uint8 codes fold into exact thresholds; no ReLU
            # before an MCconv (the quantizer's clamp at 0 is the ReLU), one before the FC
            mods += [
                _conv(variant, w[i - 1], w[i], 3, 1, first=False, **ckw),
                nn.MaxPool2d(2, 2),
                nn.BatchNorm2d(w[i] * ch),
            ]
            if i == 3:
                mods.append(nn.ReLU())
        else:
            mods += [
                _conv(variant, w[i - 1], w[i], 3, 1, first=False, **ckw),
                nn.BatchNorm2d(w[i] * ch),
                nn.ReLU(),
            ]
        if not u8:
            mods.append(nn.MaxPool2d(2, 2))
        size //= 2
    if size < 1:
        raise ValueError(f"image_size {image_size} is too small for this model")
    feat = w[3] * ch * size * size
    mods.append(nn.Flatten())
    head: list[nn.Module] = [nn.BatchNorm1d(feat)] if xnor else []
    head += [nn.Dropout(dropout), nn.Linear(feat, num_classes)]
    model = MCNNet(
        nn.Sequential(*mods),
        nn.Sequential(*head),
        num_classes=num_classes,
        feature_dim=feat,
        binary=variant not in ("float", "umcn"),
        **train_kw,
    )
    _attrs(model, variant, in_channels, image_size, num_classes)
    return model


def _attrs(
    model: nn.Module, variant: str, in_channels: int, image_size: int, num_classes: int
) -> None:
    model.inference = "bitflow" if variant in ("mcn_xnor", "mcn1_xnor") else "float"  # type: ignore[assignment]
    model.mcn_variant = variant  # type: ignore[assignment]
    model.image_size = image_size  # type: ignore[assignment]
    model.in_channels = in_channels  # type: ignore[assignment]
    model.num_classes = num_classes  # type: ignore[assignment]


def _register(name: str, builder: Any, variant: str, doc: str) -> None:
    def make(**kw: Any) -> nn.Module:
        return builder(variant, **kw)  # type: ignore[no-any-return]

    make.__name__ = name
    make.__doc__ = doc
    register_model(name)(make)


_DOCS = {
    "mcn": "MCN (paper): binarized filters, full M-Filters, real activations.",
    "mcn1": "MCN-1 (paper Sec. III-E): M planes replaced by their means.",
    "umcn": "U-MCN (paper): unbinarized filters, softmax loss only.",
    "mcn_xnor": "MCN-XNOR (bitflow's variant, not the paper's): BN -> sign -> MCconv, full M.",
    "mcn1_xnor": "MCN-XNOR with MCN-1 modulation (bitflow's variant): converts to bconv + thresholds.",
}
for _v, _d in _DOCS.items():
    _register(f"{_v}_wrn", build_wrn, _v, f"{_d} WRN backbone (Table II).")
    _register(f"{_v}_mnist", build_mnist, _v, f"{_d} Four MCconv + FC (Sec. IV-D1).")
_register("wrn", build_wrn, "float", "Full-precision WRN twin of mcn_wrn (Table II's WRN column).")
_register(
    "mcn_mnist_float",
    build_mnist,
    "float",
    "Full-precision twin of mcn_mnist (nn.Conv2d, same widths).",
)

__all__ = ["TABLE2_PARAMS_M", "TABLE2_WIDTHS", "MCNNet", "build_mnist", "build_wrn"]
