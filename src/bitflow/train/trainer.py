"""The training loop: recipes, seeds, per-epoch JSON-lines metrics, sign changing rate,
atomic checkpoints with ``--resume``, and DDP through ``torchrun``.

Determinism: every random choice of epoch ``e`` (data order, augmentation, any torch RNG use)
is seeded from ``(seed, e)``, and checkpoints are taken at epoch ends with the optimizer,
scheduler and sign-snapshot state, so a run resumed from a checkpoint continues to exactly the
same weights as an uninterrupted run (same device and thread count).

Outputs in ``out``: ``metrics.jsonl`` (one line per epoch), ``flips.jsonl`` (per-layer sign
changing rate every ``flip_log_every`` iterations), ``last.pt`` (every epoch), ``best.pt``
(best validation accuracy; the test set is never used for choosing), ``result.json``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .._io import atomic_write_bytes, atomic_write_json
from ..methods import build_model, hooks_for, method_recipe, soft_cross_entropy
from ..nn import clip_weights_, set_real_mode
from .augment import augment_batch
from .checkpoint import load_checkpoint, save_checkpoint
from .metrics import FlipTracker
from .recipes import Recipe, default_recipe_for, load_recipe


@dataclass
class TrainConfig:
    """Everything ``bitflow train`` takes (see ``bitflow train --help``)."""

    model: str
    data: str = "fashion-mnist"
    out: str = "runs/train"
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    resume: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    fold: int | None = None
    device: str | None = None
    val_fraction: float = 0.1
    workers: int = 0
    progress: bool | None = None
    stop_after: int | None = None
    flip_every: int | None = None
    init_from: str | None = None
    real_epochs: int | None = None
    calibrate: bool = True
    image_size: int | None = None
    channels: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str | None = (
        None  # a bitflow.methods name (issue 12): quantizers, transform, loss/step hooks
    )
    method_args: dict[str, Any] = field(default_factory=dict)
    # NHWC activations and weights (torch.channels_last): the same operations in another memory
    # layout; oneDNN's convolution backward is ~1.5x faster on it on CPU (bireal_resnet20, batch
    # 128). Checkpoints are stored contiguous (NCHW) either way.
    channels_last: bool = True
    #: training samples for precise BatchNorm statistics after each epoch (``None``: the recipe's).
    precise_bn: int | None = None
    #: ``"fp32"`` / ``"bf16"`` / ``"auto"``: overrides the recipe's ``precision`` (see :class:`Recipe`).
    precision: str | None = None
    #: ``torch.compile`` the training forward pass (and the distillation teacher): the same
    #: operations fused into fewer kernels (~1.2x per step on CPU; one to a few minutes of
    #: compilation, again when the warm-up ends). Evaluation stays eager.
    compile: bool = False


class _Dist:
    """Rank/world information; initializes a process group when launched by torchrun."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _lr_lambda(recipe: Recipe):  # type: ignore[no-untyped-def]
    """Learning-rate factor of a 0-based epoch. With a real-valued warm-up
    (``recipe.real_epochs``) each stage runs its own schedule: epochs and milestones count from
    the stage's first epoch."""

    def f(epoch: int) -> float:
        _, e, length = recipe.stage(epoch)
        if recipe.schedule == "multistep":
            return recipe.gamma ** sum(1 for m in recipe.milestones if e >= m)
        if recipe.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(e, length) / length))
        return 1.0

    return f


def _hook(model: nn.Module, name: str) -> Any:
    """Optional training hook of a model (``None`` if absent). A model may define
    ``param_groups(lr) -> [{"params", "lr", "lr_decay"?}, ...]`` (its own learning rates, each
    group's lr further multiplied by ``lr_decay ** epoch``), ``extra_loss(logits, y) -> Tensor``
    (added to the cross-entropy), ``after_step(optimizer)`` (after each optimizer step) and
    ``on_epoch_start(epoch)``; MCN (:class:`bitflow.nn.mcn.MCNTraining`) uses all four."""
    fn = getattr(model, name, None)
    return fn if callable(fn) else None


def _group_lambdas(opt: torch.optim.Optimizer, recipe: Recipe) -> list[Any]:
    base = _lr_lambda(recipe)

    def with_decay(decay: float) -> Any:
        return lambda epoch: base(epoch) * decay**epoch

    return [with_decay(float(g.get("lr_decay", 1.0))) for g in opt.param_groups]


def _optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    groups = _hook(model, "param_groups")
    params: Any = (
        groups(r.lr) if groups is not None else [p for p in model.parameters() if p.requires_grad]
    )
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)


def _epoch_gen(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + salt) % (2**63))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _batches(n: int, bs: int, order: Tensor) -> list[Tensor]:
    return [order[i : i + bs] for i in range(0, n, bs)]


def _fetch(ds: Any, idx: Tensor, workers: int) -> tuple[Tensor, Tensor]:
    tensors = getattr(ds, "tensors", None)
    if tensors is not None:
        x, y = tensors
        return x[idx], y[idx]
    items = [ds[int(i)] for i in idx]
    return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.as_tensor(
        [int(b) for _, b in items]
    )


def _loader(ds: Any, batches: list[Tensor], workers: int):  # type: ignore[no-untyped-def]
    """Yield ``(x, y)`` per batch of indices (slicing for in-memory data, a DataLoader else)."""
    if getattr(ds, "tensors", None) is not None or workers == 0:
        for idx in batches:
            yield _fetch(ds, idx, workers)
        return
    dl = torch.utils.data.DataLoader(
        ds, batch_sampler=[b.tolist() for b in batches], num_workers=workers
    )
    yield from dl


@torch.no_grad()
def evaluate(
    model: nn.Module, ds: Any, device: torch.device, batch_size: int = 500
) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on ``ds`` in eval mode."""
    n = len(ds)
    if n == 0:
        return float("nan"), float("nan")
    was = model.training
    model.eval()
    tot_loss, correct = 0.0, 0
    for x, y in _loader(ds, _batches(n, batch_size, torch.arange(n)), 0):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        tot_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was)
    return tot_loss / n, correct / n


@torch.no_grad()
def precise_bn_(
    model: nn.Module, ds: Any, device: torch.device, samples: int, seed: int, batch_size: int = 500
) -> int:
    """Replace every BatchNorm's running statistics by the population statistics of its input over
    ``samples`` training samples (a seeded random subset, no augmentation) under the model's
    current weights ("precise BN", Wu & Johnson 2021, *Rethinking "Batch" in BatchNorm*, Sec. 3).

    The exponential moving averages that training leaves behind average over the last ~10 steps'
    weights; when those weights keep changing (sign flips of binarized filters), they lag the
    final network and the float model evaluates worse than it trains. Here the model runs with
    every BatchNorm in training mode (so each normalizes with its batch's statistics, and no
    BatchNorm's input depends on another's running statistics) and everything else in eval mode;
    a forward pre-hook accumulates per channel ``n``, ``sum x``, ``sum x^2`` in float64, and then
    ``running_mean = sum x / n``, ``running_var = (sum x^2 - n mean^2) / (n - 1)`` (unbiased, as
    PyTorch keeps it). Returns the number of BatchNorm layers updated."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
    ]
    bns = [m for m in bns if m.track_running_stats and m.running_mean is not None]
    n = min(int(samples), len(ds))
    if not bns or n < 2:
        return 0
    acc: dict[int, list[Any]] = {id(m): [0, 0.0, 0.0] for m in bns}

    def hook(mod: nn.Module, inp: tuple[Tensor, ...]) -> None:
        x = inp[0].detach().to(torch.float64)
        dims = [d for d in range(x.dim()) if d != 1]
        a = acc[id(mod)]
        a[0] += x.numel() // x.shape[1]
        a[1] = a[1] + x.sum(dims)
        a[2] = a[2] + (x * x).sum(dims)

    was = model.training
    model.eval()
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    for m in bns:
        m.train()
    try:
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
        for x, _ in _loader(ds, _batches(n, batch_size, order), 0):
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    for m in bns:
        cnt, s1, s2 = acc[id(m)]
        if cnt < 2:
            continue
        mean = s1 / cnt
        var = (s2 - cnt * mean * mean).clamp_min(0) / (cnt - 1)
        m.running_mean.copy_(mean.to(m.running_mean.dtype))  # type: ignore[union-attr]
        m.running_var.copy_(var.to(m.running_var.dtype))  # type: ignore[union-attr]
    return len(bns)


def _conv_output_channels_last(_m: nn.Module, _inputs: Any, out: Any) -> Any:
    """Conv2d forward hook: the output as channels_last (the same values; no copy when it is)."""
    if isinstance(out, torch.Tensor) and out.dim() == 4:
        return out.contiguous(memory_format=torch.channels_last)
    return None


def _grad_channels_last(g: torch.Tensor) -> torch.Tensor:
    return g.contiguous(memory_format=torch.channels_last) if g.dim() == 4 else g


def _bn_grad_channels_last(_m: nn.Module, _inputs: Any, out: Any) -> None:
    """BatchNorm2d forward hook: the gradient that reaches this BatchNorm's backward arrives as
    channels_last, like its input."""
    if isinstance(out, torch.Tensor) and out.dim() == 4 and out.requires_grad:
        out.register_hook(_grad_channels_last)


def channels_last_(model: nn.Module, layout_hooks: bool = False) -> list[Any]:
    """Store every 4-d parameter and buffer of ``model`` as channels_last, in place (``Module.to``
    refuses models with other ranks, e.g. MCN's 5-d latent filters, which stay as they are).

    ``layout_hooks`` (eager training): also keep the activations and their gradients
    channels_last where PyTorch would mix layouts, which sends BatchNorm's backward to a slow
    generic path (measured here, 64 x 32 x 28 x 28 bfloat16, one thread: 3.3 ms with input and
    gradient both channels_last, 92 ms with an NCHW input and a channels_last gradient, 40 ms
    both NCHW). Two places mix them: a convolution of a 1-channel image (a ``[B, 1, H, W]``
    tensor is both layouts at once, so oneDNN returns NCHW while every later convolution's
    gradient comes back channels_last), and the gradient of a global average pool (an expand,
    NCHW-like) flowing back into the last stage. Hooks: every ``Conv2d`` output made
    channels_last, every ``BatchNorm2d`` output's gradient made channels_last. Layouts only: the
    values are the same (a kernel chosen for another layout may round a float sum in another
    order). Returns the hook handles (``handle.remove()`` undoes them). A compiled model chooses
    its own layouts: no hooks there."""
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    handles: list[Any] = []
    if layout_hooks:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(_conv_output_channels_last))
            elif isinstance(m, nn.BatchNorm2d):
                handles.append(m.register_forward_hook(_bn_grad_channels_last))
    return handles


def _contiguous(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every tensor in the default (contiguous, NCHW) layout: checkpoints do not
    depend on the memory format the run trained in."""
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    if rows:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def _truncate_jsonl(path: Path, keep: Any) -> None:
    """Keep only rows for which ``keep(row)`` holds (used on resume to drop rows written after
    the checkpoint the run resumes from)."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    text = "".join(json.dumps(r) + "\n" for r in rows if keep(r))
    atomic_write_bytes(path, text.encode())


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2] if random.getstate()[2] is not None else -1,
    }


def _warmup_teacher(
    model: nn.Module, config: dict[str, Any], path: Path, *, fresh: bool, save: bool
) -> nn.Module:
    """The frozen real-valued teacher of ``distill = "warmup"``: a copy of ``model`` in real mode
    (Bi-Real's real-valued twin, :func:`bitflow.nn.set_real_mode`) with the weights it has at the
    end of the warm-up. ``fresh`` (the first binarized epoch): copy ``model`` as it is, and write
    the weights to ``path`` if ``save`` (the main process); otherwise (a run resumed inside the
    binarized stage) read them from ``path``."""
    teacher = copy.deepcopy(model)
    if fresh:
        if save:
            save_checkpoint(
                path, {"model": _contiguous(teacher.state_dict()), "model_config": config}
            )
    else:
        if not path.exists():
            raise FileNotFoundError(
                f"--resume: recipe distils from the warm-up, but {path} (its weights) is missing"
            )
        teacher.load_state_dict(load_checkpoint(path)["model"])
    set_real_mode(teacher, True)
    for p in teacher.parameters():
        p.requires_grad_(False)
    # real mode also puts a fixed-point stream in its float form (FixedPointBN.exact = False)
    return teacher.eval()


def _init_from(model: nn.Module, path: str) -> None:
    """Initialise from a checkpoint: MBBN progressive initialisation (a higher-bit or
    full-precision model of the same architecture, MBBN Sec. V.A) or a strict weight copy."""
    st = load_checkpoint(path)
    if getattr(model, "mbbn", None) is not None:
        from ..nn.mbbn import init_from_higher

        init_from_higher(model, st["model"])
        return
    try:
        model.load_state_dict(st["model"])
    except RuntimeError as e:
        raise ValueError(f"--init-from {path}: weights do not fit this model: {e}") from None


CALIBRATION_SAMPLES = 1024


def _calibrate(model: nn.Module, ds: Any, seed: int) -> dict[str, float]:
    """After ``--init-from``: fit Algorithm 2's quantizer ranges to ``CALIBRATION_SAMPLES``
    training samples (a seeded subset, no augmentation; :func:`bitflow.nn.mbbn.calibrate_ranges`).
    A no-op for models without learned ranges."""
    from ..nn.mbbn import OddLinearQuantizer, OddLinearWeight, calibrate_ranges

    if not any(isinstance(m, (OddLinearQuantizer, OddLinearWeight)) for m in model.modules()):
        return {}
    n = len(ds)
    idx = torch.randperm(n, generator=_epoch_gen(seed, 0, salt=97))[: min(n, CALIBRATION_SAMPLES)]
    x, y = _fetch(ds, idx, 0)
    return calibrate_ranges(model, x, y)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA device with bf16 support, or a CPU
    with AVX512-BF16 or AMX tiles (oneDNN's bf16 convolutions; without them bf16 is emulated)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for a recipe's ``precision`` (``"auto"``: bf16 iff
    :func:`native_bf16`)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the summary also written to ``result.json``."""
    from ..data import get_data

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dd = _Dist(device)
    try:
        return _train(cfg, device, dd, get_data)
    finally:
        dd.close()


def resolve_recipe(cfg: TrainConfig) -> tuple[Recipe, Any]:
    """The recipe a run of ``cfg`` trains with (the named or default recipe, the run's overrides,
    then what the method needs unless the run sets it: :func:`bitflow.methods.method_recipe`) and
    the probed image-folder geometry (None unless ``cfg.data`` is a folder whose recipe or input
    size depends on it). Records and resumed runs compare against it: a method whose recipe
    changed is not the run on disk."""
    geometry = None
    recipe_name = cfg.recipe
    if cfg.data.startswith("folder:") and (
        recipe_name is None or cfg.image_size is None or cfg.channels is None
    ):
        # probe the image headers once: the default recipe and the input size depend on them
        from ..data import parse_spec
        from ..data.images import folder_geometry

        spec_path = parse_spec(cfg.data).path
        assert spec_path is not None
        geometry = folder_geometry(spec_path, cfg.seed)
    if recipe_name is None:
        side = cfg.image_size or (
            geometry.image_size() if geometry is not None and geometry.uniform else None
        )
        recipe_name = default_recipe_for(
            cfg.data, image_side=side, images=geometry.count if geometry else None, model=cfg.model
        )
    recipe = load_recipe(recipe_name).override(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        flip_log_every=cfg.flip_every,
        real_epochs=cfg.real_epochs,
        precision=cfg.precision,
        precise_bn=cfg.precise_bn,
    )
    # what the method needs (BinaryConnect stochastic: precise BN) unless the run says otherwise
    recipe = recipe.override(
        **{k: v for k, v in method_recipe(cfg.method).items() if getattr(cfg, k, None) is None}
    )
    return recipe, geometry


def _train(cfg: TrainConfig, device: torch.device, dd: _Dist, get_data: Any) -> dict[str, Any]:
    recipe, geometry = resolve_recipe(cfg)
    if recipe.distill and cfg.method == "kd":
        raise ValueError(
            "method 'kd' brings its own teacher; use a recipe without distill='warmup' with it"
        )
    out = Path(cfg.out)
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
    if dd.enabled and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dd.world))
    data = get_data(
        cfg.data,
        fold=cfg.fold,
        folds=recipe.folds,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        limit_train=cfg.limit_train,
        limit_test=cfg.limit_test,
        image_size=cfg.image_size
        if cfg.data.startswith(("folder:", "fashion-mnist"))
        else (cfg.image_size or recipe.image_size),
        channels=cfg.channels,
        default_image_size=recipe.image_size,
        geometry=geometry,
    )
    if len(data.train) == 0:
        raise ValueError(f"data {cfg.data!r}: the training split is empty")
    _seed_all(cfg.seed)
    kwargs = {
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "image_size": data.image_size,
    }
    kwargs.update(recipe.model_defaults.get(cfg.model, {}))  # the recipe's, then the run's
    kwargs.update(cfg.model_kwargs)
    model = build_model(cfg.model, cfg.method, cfg.method_args or None, **kwargs)
    if cfg.init_from is not None and not cfg.resume:
        _init_from(model, cfg.init_from)
        if cfg.calibrate:
            _calibrate(model, data.train, cfg.seed)
    model = model.to(device)
    if cfg.channels_last:
        channels_last_(model, layout_hooks=not cfg.compile)
    config = dict(model.bitflow_config)  # type: ignore[arg-type]
    opt = _optimizer(model, recipe)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _group_lambdas(opt, recipe))
    extra_loss, after_step, on_epoch_start = (
        _hook(model, n) for n in ("extra_loss", "after_step", "on_epoch_start")
    )
    flips = FlipTracker(model)
    hooks = hooks_for(model)
    start_epoch, iteration, best_val, best_epoch = 0, 0, -1.0, -1
    teacher: nn.Module | None = None
    history: list[float] = []
    last_flips: dict[str, float] = {}
    last_ckpt = out / "last.pt"
    if cfg.resume:
        if not last_ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {last_ckpt} to resume from")
        st = load_checkpoint(last_ckpt)
        if st["model_config"] != config or st.get("data") != cfg.data or st.get("seed") != cfg.seed:
            raise ValueError(
                f"--resume: {last_ckpt} was written for model {st['model_config']}, data {st.get('data')!r}, "
                f"seed {st.get('seed')}; this run asks for {config}, {cfg.data!r}, seed {cfg.seed}"
            )
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        flips.load_state_dict(st["flips"])
        start_epoch, iteration = int(st["epoch"]) + 1, int(st["iteration"])
        best_val, best_epoch = float(st["best_val"]), int(st["best_epoch"])
        history = list(st.get("epoch_seconds", []))
        last_flips = dict(st.get("last_flips", {}))
        hooks.iteration = iteration
        if dd.main:
            _truncate_jsonl(out / "metrics.jsonl", lambda r: r["epoch"] < start_epoch)
            _truncate_jsonl(out / "flips.jsonl", lambda r: r["iteration"] <= iteration)
    elif dd.main:
        for name in ("metrics.jsonl", "flips.jsonl"):
            (out / name).write_text("")
    net: nn.Module = model
    if dd.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    precision = resolve_precision(recipe.precision, device)
    bf16 = precision == "bf16"

    progress = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    n = len(data.train)
    augment = (
        tuple(a for a in recipe.augment if a)
        if getattr(data.train, "tensors", None) is not None
        else ()
    )
    total_iters = recipe.epochs * math.ceil(
        n / recipe.batch_size
    )  # for the methods' annealing schedules
    end_epoch = (
        recipe.epochs
        if cfg.stop_after is None
        else min(recipe.epochs, start_epoch + cfg.stop_after)
    )
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        torch.manual_seed((cfg.seed * 1_000_003 + epoch) % (2**63))
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        stage = recipe.stage(epoch)[0]
        set_real_mode(model, stage == "real")
        if recipe.real_epochs and epoch == recipe.real_epochs:
            opt.state.clear()  # binarization starts: fresh optimizer moments (Bi-Real fine-tunes anew)
        if recipe.distill and stage == "binary" and teacher is None:
            teacher = _warmup_teacher(
                model, config, out / "warmup.pt", fresh=epoch == recipe.real_epochs, save=dd.main
            )
            if cfg.compile:
                teacher = torch.compile(teacher)  # type: ignore[assignment]
        order = torch.randperm(n, generator=_epoch_gen(cfg.seed, epoch))
        batches = _batches(n, recipe.batch_size, order)
        if dd.enabled:
            batches = [b[dd.rank :: dd.world] for b in batches]
            batches = [b for b in batches if len(b) > 0]
        aug_gen = _epoch_gen(cfg.seed, epoch, salt=1 + dd.rank)
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        flip_rows: list[dict[str, Any]] = []
        it = _loader(data.train, batches, cfg.workers)
        if progress and dd.main:
            from tqdm import tqdm

            it = tqdm(
                it,
                total=len(batches),
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                leave=False,
                file=sys.stderr,
            )
        for x, y in it:
            x = augment_batch(x, augment, aug_gen).to(device)
            if cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
                loss = hooks.loss(
                    model, x, logits, y
                )  # survey methods (KD, regularizers); else cross entropy
                if teacher is not None:  # recipe distill = "warmup": + w H(p^T, p^S)
                    with torch.no_grad():
                        zt = teacher(x)
                    loss = loss + recipe.distill_weight * soft_cross_entropy(
                        F.log_softmax(logits.float(), dim=1), zt.float()
                    )
                if extra_loss is not None:  # the model's own terms (MCN filter / center losses)
                    loss = loss + extra_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            clip_weights_(model)
            if after_step is not None:
                after_step(opt)
            iteration += 1
            hooks.after_step(model, iteration / total_iters, total_iters)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if iteration % recipe.flip_log_every == 0:
                last_flips = flips.update()
                flip_rows.append({"iteration": iteration, "epoch": epoch, "flip_ratio": last_flips})
        sched.step()
        seconds = time.perf_counter() - t0
        history.append(seconds)
        if dd.enabled:
            stats = torch.tensor([loss_sum, correct, seen], dtype=torch.float64)
            dist.all_reduce(stats)
            loss_sum, correct, seen = float(stats[0]), int(stats[1]), int(stats[2])
        if dd.main:
            if recipe.precise_bn:
                precise_bn_(
                    model, data.train, device, recipe.precise_bn, seed=cfg.seed * 1_000_003 + epoch
                )
            val_loss, val_acc = evaluate(model, data.val, device)
            # only binarized epochs compete: a warm-up checkpoint is not the binary network
            improved = stage == "binary" and not math.isnan(val_acc) and val_acc > best_val
            if improved or (math.isnan(val_acc) and epoch == recipe.epochs - 1):
                best_val, best_epoch = (val_acc if not math.isnan(val_acc) else best_val), epoch
            state = {
                "model": _contiguous(model.state_dict()),
                "model_config": config,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "flips": flips.state_dict(),
                "last_flips": last_flips,
                "epoch": epoch,
                "iteration": iteration,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "epoch_seconds": history,
                "rng": _rng_state(),
                "recipe": recipe.to_dict(),
                "precision": precision,
                "data": cfg.data,
                "seed": cfg.seed,
                "num_classes": data.num_classes,
                "class_names": list(data.class_names),
            }
            save_checkpoint(last_ckpt, state)
            if improved or best_epoch == epoch:
                save_checkpoint(out / "best.pt", state)
            row = {
                "epoch": epoch,
                "stage": stage,
                "iteration": iteration,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": seconds,
            }
            _append_jsonl(out / "flips.jsonl", flip_rows)
            _append_jsonl(out / "metrics.jsonl", [row])
            if not progress:
                print(
                    f"epoch {epoch + 1}/{recipe.epochs}{' (real warm-up)' if stage == 'real' else ''}  loss {row['train_loss']:.4f}  "
                    f"train {row['train_accuracy']:.4f}  val {val_acc:.4f}  {seconds:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
        dd.barrier()

    set_real_mode(model, False)  # whatever stage a --stop-after run ended in
    result: dict[str, Any] = {}
    if dd.main:
        best_path = out / "best.pt" if (out / "best.pt").exists() else last_ckpt
        best = load_checkpoint(best_path)
        model.load_state_dict(best["model"])
        test_loss, test_acc = evaluate(model, data.test, device)
        result = {
            "model": cfg.model,
            "data": cfg.data,
            "recipe": recipe.name,
            "epochs": recipe.epochs,
            "real_epochs": recipe.real_epochs,
            "precision": precision,
            "epochs_completed": end_epoch,
            "best_epoch": best_epoch,
            "val_accuracy": best_val,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "test_samples": len(data.test),
            "input": {
                "channels": data.in_channels,
                "image_size": data.image_size,
                "in_memory": data.in_memory,
                "images": None if data.geometry is None else data.geometry.describe(),
            },
            "seconds_per_epoch": float(np.mean(history)) if history else 0.0,
            "checkpoint": str(best_path),
            "flip_ratio": last_flips,
            "world_size": dd.world,
            "device": str(device),
            "config": asdict(cfg),
            # what the run was, beyond its config: the recipe's values and the model as built
            # (a method's options with their defaults), so a later definition is not taken for it
            "recipe_values": recipe.to_dict(),
            "model_config": config,
        }
        atomic_write_json(out / "result.json", result)
    dd.barrier()
    return result
