"""The survey's BNN methods as one registry: train any backbone with any method, deploy what the
engine can express, and say exactly why not for the rest (issue 12).

A *method* is data: the quantizer names it passes to the backbone (``input_quantizer=``,
``weight_quantizer=``), an optional *transform* that swaps in modules with per-channel
parameters (ReActNet's RSign/RPReLU, BNN+'s learned scales, XNOR-Net++, ABC-Net), and optional
*training hooks* (an extra loss term, a step after every optimizer update). Python::

    from bitflow import methods
    model = methods.build_model("bitflow_vgg_small", "irnet")          # any zoo backbone
    hooks = methods.hooks_for(model)                                   # what the trainer calls
    graph = methods.convert(model)                                     # or UnsupportedLayerError

Command line: ``bitflow train --model bitflow_vgg_small --method irnet`` (``--method-arg
teacher=runs/fp/best.pt`` for ``kd``); ``bitflow convert`` / ``verify`` apply
:func:`prepare_for_deploy` (a check) to checkpoints trained with a method. ``list_methods()`` gives the
names; ``describe()`` the table of methods, bits, deploy form and the survey's numbers.

The checkpoint records ``model_config = {"name", "kwargs", "method", "method_args"}``;
:func:`build_model` rebuilds exactly that (:func:`model_from_checkpoint`, public as
``bitflow.train.model_from_checkpoint``, calls it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checkpoint import CheckpointError, load_checkpoint
from ._registry import Registry
from .convert import UnsupportedLayerError
from .models import create
from .nn import BinaryConv2d, BinaryLinear
from .nn import survey as S

Transform = Callable[[nn.Module, dict[str, Any]], None]


@dataclass(frozen=True)
class Method:
    """One BNN method. ``bits = (W, A)`` as the survey writes them (32 = full precision);
    ``deploy`` is a key of :data:`DEPLOY_FORMS` (``"pure"``: xnor-popcount + thresholds;
    ``"w1a32"``: +-1-weight convs over float32 activations; ``"float_stream"``: binary layers
    plus float ops on the residual stream; ``"u8"``: k-bit unsigned levels into exact +-1-weight
    uint8 convs; ``"table"``: per-(position, channel) thresholds, XNOR-Net++; ``"branches"``:
    ABC-Net's weighted M x N bconvs) or the exact reason
    it cannot run yet; ``survey``
    the survey's reported results (table, network); ``recipe`` the recipe values the method
    needs (:meth:`bitflow.train.Recipe.override` keys) unless the run sets them itself
    (:func:`method_recipe`)."""

    name: str
    title: str
    source: str
    bits: tuple[int, int]
    input_quantizer: str | None
    weight_quantizer: str | None
    deploy: str = "pure"
    survey: str = ""
    transform: Transform | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def deployable(self) -> bool:
        return self.deploy in DEPLOY_FORMS

    @property
    def deploy_text(self) -> str:
        """How it runs on the engine (:data:`DEPLOY_FORMS`), or ``"not yet: <reason>"``."""
        return DEPLOY_FORMS[self.deploy] if self.deployable else f"not yet: {self.deploy}"


DEPLOY_FORMS = {
    "pure": "pure xnor-popcount + thresholds",
    "w1a32": "+-1-weight conv over float32 activations (conv2d_f32b1 / dense_f32b1)",
    "float_stream": "xnor-popcount + thresholds, float ops (rprelu_f32) on the float stream",
    "table": "xnor-popcount + one exact threshold per (position, channel) (threshold_bits_hw); "
    "before a float residual add, Gamma as one rounded product per (position, channel) (scale_hw)",
    "branches": "N activation thresholds -> M x N xnor-popcount bconvs, weighted sum (float32 "
    "scale_bias + add_f32: near-threshold decisions; exact requant_i32 + add_i32 with frac=f)",
    "u8": "k-bit unsigned levels (threshold_u8) -> +-1-weight uint8 conv (conv2d_u8b1), exact integers",
}
"""How a deployable method runs on the engine (``Method.deploy``)."""


_METHODS: Registry[Method] = Registry("method")


def register(m: Method) -> Method:
    return _METHODS.register(m.name)(m)


def get_method(name: str) -> Method:
    return _METHODS.get(name)


def list_methods() -> list[str]:
    return _METHODS.names()


def method_recipe(name: str | None) -> dict[str, Any]:
    """The recipe values method ``name`` trains with unless the run gives its own (``{}`` for
    none or no method). BinaryConnect (stochastic): ``precise_bn`` (see its entry below)."""
    return {} if name is None else dict(get_method(name).recipe)


# ----------------------------------------------------------------------------- transforms


Layer = BinaryConv2d | BinaryLinear


def _binary_modules(
    model: nn.Module, convs_only: bool = False
) -> list[tuple[nn.Module, str, Layer]]:
    """``(parent, attribute, layer)`` for every binary conv (and linear) layer (not the method
    subclasses a transform already put in)."""
    out: list[tuple[nn.Module, str, Layer]] = []
    kinds = (BinaryConv2d,) if convs_only else (BinaryConv2d, BinaryLinear)
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, kinds) and type(child) in (BinaryConv2d, BinaryLinear):
                out.append((parent, attr, child))
    return out


def _conv_kwargs(m: BinaryConv2d) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": m.kernel_size,
        "stride": m.stride,
        "padding": m.padding,
        "bias": m.bias is not None,
        "pad_value": m.pad_value,
        "weight_clip": m.weight_clip,
    }


def _output_sizes(model: nn.Module) -> dict[int, tuple[int, int]]:
    """Output ``(H, W)`` of every binary conv, from one forward pass on a zero image."""
    size = int(model.image_size)  # type: ignore[arg-type]
    cin = int(model.in_channels)  # type: ignore[arg-type]
    sizes: dict[int, tuple[int, int]] = {}
    handles = [
        m.register_forward_hook(lambda mod, _i, o: sizes.__setitem__(id(mod), tuple(o.shape[-2:])))
        for _p, _a, m in _binary_modules(model, convs_only=True)
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, cin, size, size))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return sizes


def _xnorpp(model: nn.Module, args: dict[str, Any]) -> None:
    """Every binary conv becomes an :class:`~bitflow.nn.survey.XnorPPConv2d` (factorized scale
    ``alpha (x) beta (x) gamma``, alpha initialized to ``mean |W_o|``)."""
    sizes = _output_sizes(model)
    for parent, attr, m in _binary_modules(model, convs_only=True):
        assert isinstance(m, BinaryConv2d)
        new = S.XnorPPConv2d(
            **_conv_kwargs(m),
            input_quantizer=m.input_quantizer,
            weight_quantizer="sign",
            out_hw=sizes[id(m)],
        )
        with torch.no_grad():
            new.weight.copy_(m.weight)
            new.scale_c.copy_(m.weight.abs().flatten(1).mean(1))
        setattr(parent, attr, new)


def glorot_h(weight_shape: tuple[int, ...] | torch.Size) -> float:
    """BinaryConnect's per-layer weight range ``H = sqrt(1.5 / (fan_in + fan_out))`` (Glorot and
    Bengio 2010's uniform bound ``sqrt(6 / (fan_in + fan_out))``, halved), with
    ``fan_in = I k_h k_w`` and ``fan_out = O k_h k_w`` for a weight ``[O, I, k_h, k_w]`` (``[O, I]``:
    a dense layer)."""
    o, i, *kernel = (int(d) for d in weight_shape)
    rf = math.prod(kernel)
    return math.sqrt(1.5 / (i * rf + o * rf))


def _bc_glorot(model: nn.Module, args: dict[str, Any]) -> None:
    """BinaryConnect's weight range (Courbariaux et al. 2015, Sec. 2.4-2.5): with ``glorot``
    (default) every binary layer keeps its latent weights in ``[-H, H]`` with Glorot's ``H``
    (:func:`glorot_h`), initialized ``U(-H, H)``, and samples ``+1`` with probability
    ``hard_sigmoid(w / H)``. In ``w / H`` this is the paper's scaling of each layer's learning
    rate by ``1 / H`` over the range ``[-1, 1]`` (the optimizer sees the same gradient of ``w_b``
    either way; BinaryConnect's code keeps ``[-H, H]``, as here): the latent weights cross their
    range in a few hundred steps and saturate, where sampling and the deployed ``sign(w)`` agree.
    ``glorot=False``: ``H = 1`` (the survey's Eq. 7 as written), weights as the backbone built them."""
    glorot = args.get("glorot", True)
    if not isinstance(glorot, bool):
        raise ValueError(f"binaryconnect_stochastic: glorot must be true or false, got {glorot!r}")
    if not glorot:
        return
    for _p, _a, m in _binary_modules(model):
        h = glorot_h(m.weight.shape)
        m.weight_quantizer = S.StochasticBinaryConnect(h)
        m.weight_clip = h
        with torch.no_grad():
            m.weight.uniform_(-h, h)


def _abc(model: nn.Module, args: dict[str, Any]) -> None:
    """Every binary conv becomes an :class:`~bitflow.nn.survey.AbcConv2d` with ``M`` weight and
    ``N`` activation bases (binary dense layers keep the BNN/XNOR quantizers); ``frac=f`` puts
    the branch weights on the fixed-point grid ``2^-f`` (ours: the deployed sum is then exact
    integers instead of float32)."""
    frac = args.get("frac")
    for parent, attr, m in _binary_modules(model, convs_only=True):
        assert isinstance(m, BinaryConv2d)
        new = S.AbcConv2d(
            **_conv_kwargs(m),
            bases_w=int(args["M"]),
            bases_a=int(args["N"]),
            frac_bits=None if frac is None else int(frac),
        )
        with torch.no_grad():
            new.weight.copy_(m.weight)
        setattr(parent, attr, new)


def _bnnplus(model: nn.Module, args: dict[str, Any]) -> None:
    """Binary weights become :class:`~bitflow.nn.survey.BnnPlusWeight` (learned scale per output
    channel, initialized to ``mean |W_o|``) with SignSwish ``beta``; activations use ``signswish``."""
    for _p, _a, m in _binary_modules(model):
        w = m.weight.detach()
        m.weight_quantizer = S.BnnPlusWeight(
            w.shape[0], beta=float(args["beta"]), init=w.abs().flatten(1).mean(1)
        )
        m.input_quantizer = S.SignSwish(float(args["beta"]))


def _reactnet(model: nn.Module, args: dict[str, Any]) -> None:
    """RSign on every binary layer's input; with ``rprelu`` (default on) RPReLU replaces the ReLU
    right after each binary layer of a plain chain, and the identity ``requant`` after each
    residual unit (ReActNet applies RPReLU after the shortcut add)."""
    from .models.resnet import BinaryBasicBlock, BiRealUnit

    for _p, _a, m in _binary_modules(model):
        m.input_quantizer = S.RSign(
            int(m.in_channels if isinstance(m, BinaryConv2d) else m.in_features)
        )
    if not args.get("rprelu", True):
        return
    for parent in list(model.modules()):
        if isinstance(parent, nn.Sequential):
            kids = list(parent.named_children())
            for (_n0, prev), (n1, cur) in zip(kids, kids[1:], strict=False):
                if type(cur) is nn.ReLU and isinstance(prev, (BinaryConv2d, BinaryLinear)):
                    ch = prev.out_channels if isinstance(prev, BinaryConv2d) else prev.out_features
                    setattr(parent, n1, S.RPReLU(ch))
        if isinstance(parent, BiRealUnit) and type(parent.requant) is nn.Identity:
            parent.requant = S.RPReLU(parent.bn.num_features)
        if isinstance(parent, BinaryBasicBlock) and type(parent.act1) is nn.ReLU:
            parent.act1 = S.RPReLU(parent.conv1.out_channels)


# ----------------------------------------------------------------------------- the catalogue

_REAL_ACT = "w1a32"
_UNSIGNED = "u8"

register(
    Method(
        "binaryconnect",
        "BinaryConnect (deterministic)",
        "Courbariaux et al. 2015; survey Sec. 3.1",
        (1, 32),
        None,
        "sign",
        _REAL_ACT,
        "CIFAR-10 91.7 (Table 3, VGG-Small, 1/32); ImageNet 35.4 (Table 4, AlexNet, 1/32)",
    )
)
register(
    Method(
        "binaryconnect_stochastic",
        "BinaryConnect (stochastic)",
        "survey Eq. 6-7",
        (1, 32),
        None,
        "bc_stochastic",
        _REAL_ACT,
        "not a separate row; BinaryConnect: CIFAR-10 91.7 (Table 3, VGG-Small, 1/32)",
        # Training draws w_b = +1 with probability hsigmoid(w) (Eq. 6-7); the binary network that
        # is evaluated and deployed is the deterministic sign(w). The BatchNorm moving averages of
        # training describe the sampled networks (a weight near 0 is +-1 at random: the conv
        # outputs' variance differs), so they do not fit sign(w): the seed-0 run evaluated at
        # 18.3 % while training at ~78 %. After every epoch, the statistics are measured again
        # under sign(w) (precise BN over 10,000 training images: the model in eval mode, so the
        # quantizer is deterministic, BatchNorms in training mode).
        # BinaryConnect's per-layer range H (option glorot, default on; _bc_glorot): with H = 1 and
        # the common recipe's Adam steps the latent weights stayed near 0 (31-63 % of |w| < 0.1
        # after 15 epochs), so +1 was drawn with a probability near 1/2 and the run reached
        # 67.09 %; with Glorot's H the same seed reached 92.30 % (5-7 % of |w| / H < 0.1).
        transform=_bc_glorot,
        defaults={"glorot": True},
        recipe={"precise_bn": 10_000},
    )
)
register(
    Method(
        "bnn",
        "BNN (HTanh STE)",
        "Courbariaux/Hubara et al. 2016; survey Eq. 3, 5",
        (1, 1),
        "ste_sign",
        "sign",
        "pure",
        "CIFAR-10 89.9 (Table 3, VGG-Small); ImageNet 27.9 (Table 4, AlexNet)",
    )
)
register(
    Method(
        "bwn",
        "BWN",
        "Rastegari et al. 2016; survey Eq. 8",
        (1, 32),
        None,
        "xnor",
        _REAL_ACT,
        "CIFAR-10 90.1 (Table 3, VGG-Small, 1/32); ImageNet 56.8 (Table 4, AlexNet), 60.8 (ResNet-18)",
    )
)
register(
    Method(
        "xnor",
        "XNOR-Net",
        "Rastegari et al. 2016; survey Eq. 8, Fig. 2",
        (1, 1),
        "ste_sign",
        "xnor",
        "pure",
        "CIFAR-10 89.8 (Table 3, VGG-Small); ImageNet 44.2 (Table 4, AlexNet)",
    )
)
for _a in (1, 2, 4):
    register(
        Method(
            f"dorefa_w1a{_a}" if _a > 1 else "dorefa",
            f"DoReFa-Net W1/A{_a}",
            "Zhou et al. 2016, Eq. 5, 9, 12",
            (1, _a),
            f"dorefa_a{_a}",
            "dorefa_w1",
            _UNSIGNED,
            {
                1: "CIFAR-10 79.3 (Table 3, ResNet-20, 1/1); ImageNet 43.6 (Table 4, AlexNet, 1/1)",
                2: "ImageNet 49.8 (Table 4, AlexNet; the row's bit width is printed 1/1, probably 1/2)",
                4: "no W1/A4 DoReFa row in Tables 3-4",
            }[_a],
        )
    )
register(
    Method(
        "xnorpp",
        "XNOR-Net++",
        "Bulat & Tzimiropoulos 2019, Eq. 4-6 (case 3)",
        (1, 1),
        "ste_sign",
        "sign",
        "table",
        "ImageNet 57.1 (Table 4, ResNet-18), 46.9 (AlexNet)",
        transform=_xnorpp,
    )
)
register(
    Method(
        "bireal",
        "Bi-Real Net ApproxSign",
        "Liu et al. 2018; survey Eq. 12-13",
        (1, 1),
        "approx_sign",
        "xnor",
        "pure",
        "ImageNet 56.4 (Table 4, ResNet-18), 62.2 (ResNet-34); backbone bireal_resnet20 adds its shortcuts",
    )
)
register(
    Method(
        "bnnplus",
        "BNN+ (SignSwish + R1 regularizer)",
        "Darabi et al. 2018",
        (1, 1),
        "signswish",
        "sign",
        "pure",
        "not in Tables 3-4 (named in Sec. 3.2.3)",
        transform=_bnnplus,
        defaults={"beta": 5.0, "lam": 1e-6, "reg": "l1"},
    )
)
register(
    Method(
        "dsq",
        "DSQ (1 bit)",
        "Gong et al. 2019; survey Eq. 14",
        (1, 1),
        "dsq",
        "dsq_w",
        "pure",
        "CIFAR-10 91.7 (Table 3, VGG-Small), 84.1 (ResNet-20); ImageNet 63.7 (Table 4, ResNet-18, 1/32)",
    )
)
register(
    Method(
        "irnet",
        "IR-Net (Libra-PB + EDE)",
        "Qin et al. 2020 (IR-Net Eq. 9-13)",
        (1, 1),
        "ede",
        "irnet",
        "pure",
        "CIFAR-10 90.4 (Table 3, VGG-Small), 86.5 (ResNet-20); ImageNet 58.1 (Table 4, ResNet-18)",
    )
)
register(
    Method(
        "pact",
        "PACT W1/A2",
        "Choi et al. 2018 (PACT Eq. 1-3), DoReFa weights",
        (1, 2),
        "pact_a2",
        "dorefa_w1",
        _UNSIGNED,
        "ImageNet 62.9 (Table 4, ResNet-18, 1/2), 67.8 (ResNet-50, 1/2)",
    )
)
register(
    Method(
        "proxquant",
        "ProxQuant",
        "Bai et al. 2019 (prox operator Eq. 9)",
        (1, 1),
        "ste_sign",
        "proxquant",
        "pure",
        "CIFAR-10 90.7 (Table 3, ResNet-20, 1/32: weights only; here with BNN sign activations so it deploys)",
        defaults={"lam_sum": 2.0},
    )
)
register(
    Method(
        "selfbin",
        "Self-binarizing networks",
        "Lahoud et al. 2019 (tanh(v x) -> sign)",
        (1, 1),
        "selfbin",
        "selfbin_w",
        "pure",
        "not in Tables 3-4 (named in Sec. 3.2.3, ref. [94])",
    )
)
register(
    Method(
        "reactnet",
        "ReActNet (RSign + RPReLU)",
        "Liu et al. 2020 (post-survey)",
        (1, 1),
        "approx_sign",
        "xnor",
        "float_stream",
        "post-survey (2020); not in Tables 3-4",
        transform=_reactnet,
        defaults={"rprelu": True},
    )
)
register(
    Method(
        "reactnet_rsign",
        "ReActNet RSign only",
        "Liu et al. 2020, Eq. 1",
        (1, 1),
        "approx_sign",
        "xnor",
        "pure",
        "ablation of ReActNet (not in the survey)",
        transform=_reactnet,
        defaults={"rprelu": False},
    )
)
register(
    Method(
        "abc",
        "ABC-Net (M weight x N activation bases)",
        "Lin et al. 2017, Eq. 2-9",
        (1, 1),
        None,
        None,
        "branches",
        "ImageNet 42.7 (Table 4, ResNet-18, 1/1), 62.8 (ResNet-18, 1/32)",
        transform=_abc,
        defaults={"M": 3, "N": 3, "frac": None},
    )
)
register(
    Method(
        "kd",
        "Knowledge distillation (Apprentice)",
        "Mishra & Marr 2018; survey Eq. 11",
        (1, 1),
        "ste_sign",
        "xnor",
        "pure",
        "Apprentice is not in Tables 3-4 (Eq. 11, Sec. 3.2.2)",
        defaults={"teacher": None, "beta": 1.0, "gamma": 1.0},
    )
)


# ----------------------------------------------------------------------------- building


def method_args(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's defaults updated with ``given``; unknown keys raise ``ValueError``."""
    m = get_method(name)
    given = dict(given or {})
    unknown = sorted(set(given) - set(m.defaults))
    if unknown:
        valid = ", ".join(sorted(m.defaults)) or "none"
        raise ValueError(f"method {name!r} has no option {unknown}; its options: {valid}")
    return {**m.defaults, **given}


def build_model(
    model: str,
    method: str | None = None,
    method_args_: dict[str, Any] | None = None,
    /,
    **kwargs: Any,
) -> nn.Module:
    """``bitflow.models.create(model, **kwargs)`` with ``method``'s quantizers (given ``kwargs``
    win only if they do not contradict the method) and its transform applied. The result's
    ``bitflow_config`` records the method so that checkpoints rebuild the same model. The first
    three parameters are positional-only: ``kwargs`` may hold a model's own ``method`` option
    (the MBBN models' ``method="quantizer" | "encoder"``)."""
    if method is None:
        if method_args_:
            raise ValueError("method options given without a method")
        return create(model, **kwargs)
    m = get_method(method)
    args = method_args(method, method_args_)
    for key in ("input_quantizer", "weight_quantizer"):
        want = getattr(m, key)
        if key in kwargs and kwargs[key] != want and m.transform is None:
            raise ValueError(
                f"method {method!r} sets {key}={want!r}; do not also pass {key}={kwargs[key]!r}"
            )
        kwargs[key] = want
    if (
        m.transform is _abc
    ):  # the transform replaces the layers; build them as plain sign layers first
        kwargs["input_quantizer"], kwargs["weight_quantizer"] = "ste_sign", "sign"
    try:
        net = create(model, **kwargs)
    except TypeError as e:
        raise ValueError(
            f"model {model!r} cannot take method {method!r} (it sets input_quantizer/"
            f"weight_quantizer): {e}"
        ) from None
    if not any(True for _ in _binary_modules(net)):
        raise ValueError(
            f"model {model!r} has no binary layers to apply method {method!r} to; use a binary backbone"
        )
    if m.transform is not None:
        m.transform(net, args)
    cfg = dict(net.bitflow_config)  # type: ignore[arg-type]
    cfg["kwargs"] = {k: v for k, v in cfg["kwargs"].items()}
    cfg.update({"method": method, "method_args": args})
    net.bitflow_config = cfg  # type: ignore[assignment]
    return net


def model_from_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (eval mode) and return it with the checkpoint dict: the
    zoo model of ``model_config``, or :func:`build_model` of its method (the public name is
    ``bitflow.train.model_from_checkpoint``)."""
    state = load_checkpoint(path)
    cfg = state["model_config"]
    if cfg.get("method"):  # trained with a bitflow.methods method: same quantizers and transform
        model = build_model(
            cfg["name"], cfg["method"], cfg.get("method_args"), **cfg.get("kwargs", {})
        )
    else:
        model = create(cfg["name"], **cfg.get("kwargs", {}))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match model {cfg['name']!r}: {e}") from None
    model.eval()
    return model, state


# ----------------------------------------------------------------------------- training hooks


class MethodHooks:
    """What the trainer calls for a method: ``loss(model, x, logits, y)`` (cross-entropy plus the
    method's term) and ``after_step(model, progress, total_steps)`` (annealing, proximal steps), ``progress``
    in [0, 1] being the share of all training iterations done."""

    def __init__(self, method: str | None, args: dict[str, Any]) -> None:
        self.method = method
        self.args = args
        self._teacher: nn.Module | None = None
        self.iteration = 0

    def teacher(self, device: torch.device) -> nn.Module:
        if self._teacher is None:
            path = self.args.get("teacher")
            if not path:
                raise ValueError(
                    "method 'kd' needs a teacher: --method-arg teacher=PATH/best.pt (a trained "
                    "full-precision twin of the backbone, e.g. vgg_small for bitflow_vgg_small)"
                )
            t, _ = model_from_checkpoint(path)
            for p in t.parameters():
                p.requires_grad_(False)
            self._teacher = t.eval()
        return self._teacher.to(device)

    def loss(self, model: nn.Module, x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        if self.method == "kd":
            with torch.no_grad():
                zt = self.teacher(x.device)(x)
            return apprentice_loss(
                logits, zt, y, float(self.args["beta"]), float(self.args["gamma"])
            )
        ce = F.cross_entropy(logits, y)
        if self.method == "bnnplus":
            reg = torch.zeros((), device=logits.device)
            for _p, _a, m in _binary_modules(model):
                wq = m.weight_quantizer
                if isinstance(wq, S.BnnPlusWeight):
                    reg = reg + S.bnnplus_regularizer(m.weight, wq.alpha, self.args["reg"])
            return ce + float(self.args["lam"]) * reg
        return ce

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: float, total_steps: int = 1000) -> None:
        """After every optimizer step. ProxQuant's strength grows linearly (ProxQuant: ``lam_t = lam t``),
        scaled to the run: ``lam_t = 2 lam_sum progress / total_steps``, so that the prox steps add
        up to ``sum_t lam_t ~ lam_sum`` = 2 by the end, enough to move any latent weight in [-1, 1]
        (distance <= 1 to the nearest of +-1) onto +-1 whatever the run length."""
        self.iteration += 1
        for mod in model.modules():
            if isinstance(mod, S._Annealed):
                mod.set_progress(progress)
        if self.method == "proxquant":
            lam = (
                2.0
                * float(self.args["lam_sum"])
                * min(max(progress, 0.0), 1.0)
                / max(int(total_steps), 1)
            )
            for _p, _a, m in _binary_modules(model):
                if isinstance(m.weight_quantizer, S.ProxQuantWeight):
                    m.weight.copy_(S.proxquant_prox(m.weight, lam))


def apprentice_loss(
    zs: Tensor, zt: Tensor, y: Tensor, beta: float = 1.0, gamma: float = 1.0
) -> Tensor:
    """Survey Eq. 11 with a fixed teacher: ``beta H(y, p^S) + gamma H(p^T, p^S)`` (the term
    ``alpha H(y, p^T)`` is a constant for a fixed teacher and is dropped; ``H(p, q) =
    -sum p log q`` is the cross-entropy, T = 1 as in Apprentice), averaged over the batch."""
    logp = F.log_softmax(zs, dim=1)
    return beta * F.nll_loss(logp, y) + gamma * soft_cross_entropy(logp, zt)


def soft_cross_entropy(logp_s: Tensor, zt: Tensor) -> Tensor:
    """``H(p^T, p^S) = -sum_c p^T_c log p^S_c`` averaged over the batch, from the student's
    log-probabilities ``logp_s`` and the teacher's logits ``zt`` (T = 1)."""
    return -(F.softmax(zt, dim=1) * logp_s).sum(1).mean()


def hooks_for(model: nn.Module) -> MethodHooks:
    """The hooks of the method a model was built with (plain cross-entropy without one)."""
    cfg = getattr(model, "bitflow_config", {}) or {}
    return MethodHooks(cfg.get("method"), dict(cfg.get("method_args") or {}))


# ----------------------------------------------------------------------------- deployment


def prepare_for_deploy(model: nn.Module) -> nn.Module:
    """Check that a model trained with a method can deploy, or raise
    :class:`UnsupportedLayerError` saying exactly which engine op the method would need. The
    converter reads every deployable method's modules as they are (ReActNet's RSign becomes a
    per-channel threshold shift, RPReLU ``rprelu_f32``, a binary layer without an input
    quantizer ``conv2d_f32b1``); the model is not changed."""
    cfg = getattr(model, "bitflow_config", {}) or {}
    name = cfg.get("method")
    if name is None:
        return model
    m = get_method(name)
    if not m.deployable:
        raise UnsupportedLayerError(
            f"method {name!r} ({m.title}) cannot run on the engine yet: {m.deploy}"
        )
    return model


def convert(model: nn.Module, **kwargs: Any) -> Any:
    """:func:`prepare_for_deploy` then :func:`bitflow.convert.convert`."""
    from .convert import convert as _convert

    return _convert(prepare_for_deploy(model), **kwargs)


def describe() -> list[dict[str, Any]]:
    """One row per method: name, title, W/A bits, deploy form, the survey's numbers."""
    return [
        {
            "method": m.name,
            "title": m.title,
            "source": m.source,
            "w_bits": m.bits[0],
            "a_bits": m.bits[1],
            "deploy": m.deploy_text,
            "survey": m.survey,
        }
        for m in (_METHODS.get(n) for n in _METHODS.names())
    ]


__all__ = [
    "DEPLOY_FORMS",
    "Method",
    "MethodHooks",
    "apprentice_loss",
    "soft_cross_entropy",
    "build_model",
    "convert",
    "describe",
    "get_method",
    "glorot_h",
    "hooks_for",
    "list_methods",
    "method_args",
    "prepare_for_deploy",
]
