"""The engine's fused float stream (``FloatStream``: scale_bias / affine_f32 chains -> add_f32 ->
threshold_f32_bits in one pass, optionally as a binary convolution's epilogue) and the vectorized
float max-pool equal the unfused ops bit for bit: on random data with NaN, infinities, -0.0 and
ties, odd channel counts, every operand position, and on residual networks for every kernel set
and thread count (the fused plan against the op-by-op plan, value by value)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitflow import _native as N
from bitflow.bench import zoo_model
from bitflow.engine import Engine, available_kernels
from bitflow.ir import Graph, InputSpec, Op, pack_bits

KERNELS = available_kernels()  # the engine forces each; "auto" below is the default selection
STREAM_KERNELS = [*KERNELS, "auto"]


@pytest.fixture()
def fine_grain():  # type: ignore[no-untyped-def]
    old = N._set_grain_ns(0.0)  # every op takes every split, even on tiny inputs
    yield
    N._set_grain_ns(old)


def _specials(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, size=max(1, flat.size // 10), replace=False)
    flat[idx] = rng.choice(
        np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0], np.float32), size=idx.size
    )
    return x


@pytest.mark.parametrize("kernels", STREAM_KERNELS)
@pytest.mark.parametrize("o", [1, 3, 16, 64, 70, 130])
@pytest.mark.parametrize("threads", [1, 3])
def test_float_stream_equals_the_unfused_ops(
    kernels: str, o: int, threads: int, fine_grain: None
) -> None:
    rng = np.random.default_rng(o)
    shape = (2, 5, 3, o)
    acc = rng.integers(-300, 300, size=shape).astype(np.int32)
    f1 = _specials(rng, shape)
    f2 = _specials(rng, shape)
    st = [
        (rng.standard_normal(o).astype(np.float32), rng.standard_normal(o).astype(np.float32))
        for _ in range(3)
    ]
    thr = rng.standard_normal(o).astype(np.float32)
    thr[: o // 3] = 0.0  # ties with the -0.0 / 0.0 inputs
    d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)

    def unfused(order: list[int]) -> tuple[np.ndarray, np.ndarray]:
        v0 = N.affine_f32(N.scale_bias(acc, *st[0]), *st[1])
        v1 = N.affine_f32(f1, *st[2])
        vals = [v0, v1, f2]
        y = N.add_f32([vals[k] for k in order])
        return y, N.threshold_f32_bits(y, thr, d)

    spec = {0: (True, [st[0], st[1]]), 1: (False, [st[2]]), 2: (False, [])}
    arrays = {0: acc, 1: f1, 2: f2}
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        want_y, want_b = unfused(order)
        fs = N.FloatStream(
            o,
            [spec[k][0] for k in order],
            [spec[k][1] for k in order],
            thr=thr,
            direction=d,
            kernels=kernels,
        )
        assert fs.wide == (
            kernels == "avx512"
            or (kernels == "auto" and "avx512" in N.kernel_info("auto")["bitpack_f32"])
        )
        # the AVX2 rows go with an AVX2 float bit packing (8 channels a step, masked tails)
        assert fs.avx2 == (not fs.wide and "avx2" in N.kernel_info(kernels)["bitpack_f32"])
        y, b = fs([arrays[k] for k in order], threads)
        assert y.tobytes() == want_y.tobytes()  # bit for bit, NaN payloads included
        assert np.array_equal(b, want_b)
        only_bits = N.FloatStream(
            o,
            [spec[k][0] for k in order],
            [spec[k][1] for k in order],
            thr=thr,
            direction=d,
            keep_y=False,
            kernels=kernels,
        )
        assert np.array_equal(only_bits([arrays[k] for k in order], threads), want_b)
        only_y = N.FloatStream(
            o, [spec[k][0] for k in order], [spec[k][1] for k in order], kernels=kernels
        )
        assert only_y([arrays[k] for k in order], threads).tobytes() == want_y.tobytes()
    plain = N.FloatStream(o, [False], [[]], thr=thr, direction=d, keep_y=False, kernels=kernels)
    assert np.array_equal(plain([f1], threads), N.threshold_f32_bits(f1, thr, d))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("stride,pad_value", [(1, 0), (2, 0), (1, 1)])
def test_float_stream_after_a_binary_convolution(
    kernels: str, stride: int, pad_value: int, fine_grain: None
) -> None:
    rng = np.random.default_rng(stride)
    n, h, c, o = 2, 9, 70, 40
    xb = N.bitpack(rng.standard_normal((n, h, h, c)).astype(np.float32))
    w = N.bitpack(rng.standard_normal((o, 3, 3, c)).astype(np.float32))
    layer = N.BinaryLayer(w, c, (stride, stride), (1, 1), pad_value, kernels=kernels)
    for threads in (1, 2, 3):
        acc = layer(xb, threads)
        other = _specials(rng, acc.shape)
        st = (rng.standard_normal(o).astype(np.float32), rng.standard_normal(o).astype(np.float32))
        thr = rng.standard_normal(o).astype(np.float32)
        d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
        for pos in (0, 1):
            i32 = [True, False] if pos == 0 else [False, True]
            stages = [[st], []] if pos == 0 else [[], [st]]
            fs = N.FloatStream(o, i32, stages, thr=thr, direction=d, kernels=kernels)
            vals = [N.scale_bias(acc, *st), other] if pos == 0 else [other, N.scale_bias(acc, *st)]
            want_y = N.add_f32(vals)
            y, b = fs.after(layer, xb, [other], pos, threads)
            assert y.tobytes() == want_y.tobytes()
            assert np.array_equal(b, N.threshold_f32_bits(want_y, thr, d))


@pytest.mark.parametrize("kernels", STREAM_KERNELS)
@pytest.mark.parametrize(
    "case",
    [
        ((1, 11, 11, 3), (64, 7, 7, 3), 2, 3),
        ((2, 6, 5, 20), (40, 1, 1, 20), 1, 0),
        ((1, 9, 9, 8), (17, 3, 3, 8), 1, 1),
    ],
)
def test_float_stream_in_place_after_a_float_convolution(
    kernels: str, case: tuple, fine_grain: None
) -> None:
    xs, ws, stride, pad = case
    rng = np.random.default_rng(ws[0])
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    bias = rng.standard_normal(ws[0]).astype(np.float32)
    st = (
        rng.standard_normal(ws[0]).astype(np.float32),
        rng.standard_normal(ws[0]).astype(np.float32),
    )
    for threads in (1, 2, 3):
        want = N.affine_f32(
            N.conv2d_f32(
                x, w, bias, (stride, stride), (pad, pad), kernels=kernels, threads=threads
            ),
            *st,
        )
        fs = N.FloatStream(ws[0], [False], [[st]], kernels=kernels)
        got = fs.after_conv2d(x, w, bias, (stride, stride), (pad, pad), kernels, threads)
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("kernels", STREAM_KERNELS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fast_float_maxpool_equals_the_definition(
    kernels: str, threads: int, fine_grain: None
) -> None:
    rng = np.random.default_rng(threads)
    for shape, k, s, p in [
        ((2, 9, 11, 70), (3, 3), (2, 2), (1, 1)),
        ((1, 8, 8, 5), (2, 2), (2, 2), (0, 0)),
        ((1, 7, 7, 64), (3, 2), (1, 2), (1, 1)),
        ((2, 12, 12, 16), (3, 3), (2, 2), (1, 1)),
    ]:
        x = _specials(rng, shape)
        x[..., : shape[-1] // 2] = np.round(x[..., : shape[-1] // 2])  # ties, +-0.0
        want = N.maxpool_f32(x, k, s, p)
        assert N.maxpool_f32_fast(x, k, s, p, threads, kernels).tobytes() == want.tobytes()


def _random_bn(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(2 * torch.rand(m.weight.shape, generator=g) - 1)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "name,kw",
    [
        ("bireal_resnet20", {"width": 8}),
        ("bireal_resnet20", {"width": 8, "downsample": "conv"}),
        ("bireal_resnet20", {"width": 8, "first_layer": "int8"}),
        ("bireal_resnet18", {"width": 8, "image_size": 32, "num_classes": 10, "stem": "imagenet"}),
        (
            "bireal_resnet18",
            {
                "width": 8,
                "image_size": 32,
                "num_classes": 10,
                "stem": "imagenet",
                "first_layer": "int8",
            },
        ),
        ("bitflow_resnet18", {"width": 8, "image_size": 32, "num_classes": 10}),
        ("bireal_resnet20", {"width": 8, "residual": "int"}),
        (
            "bireal_resnet18",
            {
                "width": 8,
                "image_size": 32,
                "num_classes": 10,
                "stem": "imagenet",
                "residual": "int",
            },
        ),
    ],
)
def test_fused_plan_equals_op_by_op_plan_on_residual_networks(
    name: str, kw: dict, fine_grain: None
) -> None:
    graph, _ = zoo_model(name, **kw)
    spec = graph.input
    x = np.random.default_rng(2).random(
        (3, spec.channels, spec.height, spec.width), dtype=np.float32
    )
    for kernels in KERNELS:
        for threads in (1, 2, 3):
            eng = Engine(graph, kernels=kernels, threads=threads)
            ops_by_op = eng.run(x, keep=True)
            env = {graph.input.name: eng._prepare(x)}
            for step in eng._plan:
                env.update(step.outputs(step.fn([env[v] for v in step.srcs])))
            assert len(env) > 1
            for v, arr in env.items():
                assert (
                    np.ascontiguousarray(arr).tobytes()
                    == np.ascontiguousarray(ops_by_op[v]).tobytes()
                ), (kernels, threads, v)
            assert eng.logits(x).tobytes() == ops_by_op[graph.output].tobytes()
    if name.startswith("bireal"):
        assert any(
            len(s.extra) == 1 and "bconv2d" in {o.type for o in graph.ops if o.name in s.ops}
            for s in eng._plan
        )
    if kw.get("residual") == "int":  # the integer stream, with a binary convolution's epilogue
        types = {o.name: o.type for o in graph.ops}
        kinds = [{types[o] for o in s.ops} for s in eng._plan]
        assert sum({"bconv2d", "requant_i32", "add_i32", "threshold_bits"} <= k for k in kinds) >= 3
    if kw.get("stem") == "imagenet" and (
        kw.get("first_layer") == "int8" or kw.get("residual") == "int"
    ):
        assert _pool_first_steps(eng) == 1  # the stem pooled on int32 (its BN has gammas < 0)


def _pool_first_steps(eng: Engine) -> int:
    types = {o.name: o.type for o in eng.graph.ops}
    return sum(
        1
        for s in eng._plan
        if types[s.ops[0]] == "conv2d_u8i8"
        and {"maxpool_f32", "maxpool_i32"} & {types[o] for o in s.ops}
        and len(s.ops) > 2
    )


def _check_pool_first(g: Graph, xs: list[np.ndarray], fused: bool) -> None:
    """Every value the fused plan computes equals the op-by-op plan's, bit for bit, on every
    kernel set and thread count; ``fused``: whether the pool-first step is in the plan."""
    for kernels in KERNELS:
        for threads in (1, 2):
            eng = Engine(g, kernels=kernels, threads=threads)
            assert _pool_first_steps(eng) == int(fused)
            for x in xs:
                want = eng.run(x, keep=True)
                env = {g.input.name: eng._prepare(x)}
                for step in eng._plan:
                    env.update(step.outputs(step.fn([env[v] for v in step.srcs])))
                assert "out" in env and ("p" in env or "t" in env)
                for v, arr in env.items():
                    assert arr.tobytes() == want[v].tobytes(), (kernels, threads, v)


def _stem_graph(
    rng: np.random.Generator,
    o: int,
    stages: list[tuple[np.ndarray, np.ndarray]],
    w: np.ndarray,
    thr: bool = False,
) -> Graph:
    """conv2d_u8i8 -> scale_bias [-> affine_f32] -> maxpool_f32 "p" -> global pool; with
    ``thr`` "p" read by a threshold_f32_bits alone, its bits by a 1x1 bconv (the residual
    networks have the case where "p" is kept too)."""
    tensors: dict[str, np.ndarray] = {"w": w}
    ops = [
        Op("conv2d_u8i8", "c", ["input"], ["c"], {"stride": [2, 2], "padding": [3, 3]}, {"w": "w"})
    ]
    v = "c"
    for k, (sc, bi) in enumerate(stages):
        tensors[f"s{k}"], tensors[f"b{k}"] = sc, bi
        kind = "scale_bias" if k == 0 else "affine_f32"
        ops.append(Op(kind, f"a{k}", [v], [f"a{k}"], {}, {"scale": f"s{k}", "bias": f"b{k}"}))
        v = f"a{k}"
    pool = {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}
    ops.append(Op("maxpool_f32", "p", [v], ["p"], pool))
    last = "p"
    if thr:
        tensors["thr"] = rng.standard_normal(o).astype(np.float32)
        tensors["dir"] = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
        tensors["wb"] = pack_bits(rng.random((5, 1, 1, o)) < 0.5)
        tensors["sb"] = np.ones(5, np.float32)
        tensors["bb"] = np.zeros(5, np.float32)
        ops.append(
            Op("threshold_f32_bits", "t", ["p"], ["t"], {}, {"thr": "thr", "direction": "dir"})
        )
        conv = {"stride": [1, 1], "padding": [0, 0], "channels": o, "pad_value": 0}
        ops.append(Op("bconv2d", "bc", ["t"], ["bc"], conv, {"w": "wb"}))
        ops.append(Op("scale_bias", "bs", ["bc"], ["bs"], {}, {"scale": "sb", "bias": "bb"}))
        last = "bs"
    ops.append(Op("global_avgpool_f32", "gap", [last], ["gap"]))
    ops.append(Op("flatten", "fl", ["gap"], ["out"]))
    g = Graph(InputSpec(3, 21, 19, "uint8"), ops, tensors, "out", mode="mixed")
    g.validate()
    return g


def test_stem_pooled_on_int32_before_its_affine_chain_is_bit_exact() -> None:
    """conv2d_u8i8 -> scale_bias -> affine_f32 -> maxpool_f32 runs as conv -> int32 pool ->
    chain (Engine._fuse_pool_first): the same bits as the ops one by one, with scales of both
    signs and zero (a decreasing chain pools the negated channel), ties made by rounding (a
    tiny scale next to a large bias), +0.0 biases, -128 weights in increasing channels, and
    inputs at 0 and 255; refused (and still exact) where its proof does not hold."""
    rng = np.random.default_rng(7)
    o = 40
    w = rng.integers(-127, 128, size=(o, 7, 7, 3)).astype(np.int8)

    def stages() -> list[tuple[np.ndarray, np.ndarray]]:
        s0 = (rng.standard_normal(o) * 1e-3).astype(np.float32)
        s0[:5] = 0.0
        b0 = rng.standard_normal(o).astype(np.float32)
        b0[5:10] = 0.0
        s1 = rng.standard_normal(o).astype(np.float32)
        s1[10:15] = 2.0**-20  # ties: many sums round to the same value next to b1 = 1000
        b1 = rng.standard_normal(o).astype(np.float32)
        b1[10:15] = 1000.0
        b1[15:18] = 0.0
        return [(s0, b0), (s1, b1)]

    st = stages()
    flip = np.sign(st[0][0]) * np.sign(st[1][0]) < 0
    assert flip.any() and (~flip).any()
    w[~flip & (np.arange(o) % 2 == 0), 0, 0, 0] = -128
    xs = [
        rng.random((3, 3, 21, 19), dtype=np.float32),
        np.zeros((1, 3, 21, 19), np.float32),
        np.ones((1, 3, 21, 19), np.float32),
    ]

    _check_pool_first(_stem_graph(rng, o, st, w), xs, True)
    _check_pool_first(
        _stem_graph(rng, o, st, w, thr=True), xs, True
    )  # the bits alone come out of the step
    # refused: a last bias of -0.0; a -128 weight in a decreasing channel; a scale that could
    # overflow float32
    # channel 20: a zero scale after sums of both signs gives +-0 ties, kept as -0 by a last
    # bias of -0.0 (the float pool keeps the first of a tie, the rewrite one fixed zero)
    neg0 = [(st[0][0].copy(), st[0][1].copy()), (st[1][0].copy(), st[1][1].copy())]
    neg0[0][1][20], neg0[1][0][20], neg0[1][1][20] = 0.0, 0.0, -0.0
    _check_pool_first(_stem_graph(rng, o, neg0, w), xs, False)
    w128 = w.copy()
    w128[np.argmax(flip), 3, 3, 1] = -128
    _check_pool_first(_stem_graph(rng, o, st, w128), xs, False)
    # channel 30: sums beyond 3.4e4 overflow to -inf, and times 0 give NaN, while the small
    # ones stay finite: f is not monotone, and a window's maximum need not be where the NaN is
    big = [(st[0][0].copy(), st[0][1]), (st[1][0].copy(), st[1][1])]
    big[0][0][30], big[1][0][30] = -1e34, 0.0
    _check_pool_first(_stem_graph(rng, o, big, w), xs, False)


@pytest.mark.parametrize("threads", [1, 3])
def test_native_float_input_layout_equals_the_reference_preprocessing(
    threads: int, fine_grain: None
) -> None:
    from bitflow.ir import InputSpec
    from bitflow.ir.reference import preprocess

    x = np.random.default_rng(0).random((2, 3, 7, 5), dtype=np.float32)
    x[0, 1, 2, 3] = -0.0

    class _G:  # the reference preprocessing reads only the input spec
        input = InputSpec(3, 7, 5)

    assert N.nhwc_f32(x, threads).tobytes() == preprocess(_G(), x).tobytes()  # type: ignore[arg-type]
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 2, 6, 4] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            N.nhwc_f32(y, threads)


def _int_stem_graph(
    m: np.ndarray, b: np.ndarray, w: np.ndarray, clamp: list[int] | None, shift: int = 12
) -> Graph:
    o = w.shape[0]
    rng = np.random.default_rng(3)
    tensors = {
        "w": w,
        "m": m,
        "b": b,
        "thr": rng.integers(-50, 50, size=o).astype(np.int32),
        "dir": np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8),
        "sc": np.full(o, 0.5, np.float32),
        "bi": np.zeros(o, np.float32),
    }
    tensors["wb"] = pack_bits(rng.random((o, 1, 1, o)) < 0.5)
    one = {"stride": [1, 1], "padding": [0, 0]}
    rq_attrs: dict = {"shift": shift, **({"clamp": clamp} if clamp else {})}
    pool = {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}
    ops = [
        Op("conv2d_u8i8", "c", ["input"], ["c"], {"stride": [2, 2], "padding": [3, 3]}, {"w": "w"}),
        Op("requant_i32", "rq", ["c"], ["rq"], rq_attrs, {"m": "m", "b": "b"}),
        Op("maxpool_i32", "p", ["rq"], ["p"], pool),
        Op("threshold_bits", "t", ["p"], ["t"], {}, {"thr": "thr", "direction": "dir"}),
        Op("scale_bias", "s", ["p"], ["s"], {}, {"scale": "sc", "bias": "bi"}),
        Op("bconv2d", "bc", ["t"], ["bc"], {**one, "channels": o, "pad_value": 0}, {"w": "wb"}),
        Op("scale_bias", "s2", ["bc"], ["s2"], {}, {"scale": "sc", "bias": "bi"}),
        Op("add_f32", "a", ["s", "s2"], ["a"]),
        Op("global_avgpool_f32", "gap", ["a"], ["gap"]),
        Op("flatten", "fl", ["gap"], ["out"]),
    ]
    g = Graph(InputSpec(3, 21, 19, "uint8"), ops, tensors, "out", mode="mixed")
    g.validate()
    return g


def test_int_stem_pooled_before_its_requantization_is_exact() -> None:
    """conv2d_u8i8 -> requant_i32 -> maxpool_i32 -> threshold_bits runs as conv -> int32 pool
    -> requant + threshold (Engine._pool_first_int): the same integers and bits as the ops one
    by one, with multipliers of both signs and zero, clamped or not; refused where a weight to
    negate is -128 or an unclamped requantization could overflow."""
    rng = np.random.default_rng(11)
    o = 36
    w = rng.integers(-127, 128, size=(o, 7, 7, 3)).astype(np.int8)
    m = rng.integers(-(2**12), 2**12, size=o).astype(np.int64)
    m[:3] = 0
    b = rng.integers(-(2**20), 2**20, size=o).astype(np.int64)
    w[m >= 0, 1, 1, 1] = -128  # only channels that are not negated
    xs = [rng.random((3, 3, 21, 19), dtype=np.float32), np.ones((1, 3, 21, 19), np.float32)]

    _check_pool_first(_int_stem_graph(m, b, w, [-300, 300]), xs, True)
    _check_pool_first(
        _int_stem_graph(m, b, w, None), xs, True
    )  # |q| <= 255 * 147 * 128 * 2^12 / 2^12 fits
    w128 = w.copy()
    w128[np.argmax(m < 0), 2, 2, 2] = -128
    _check_pool_first(_int_stem_graph(m, b, w128, [-300, 300]), xs, False)
    _check_pool_first(
        _int_stem_graph(m * 2**10, b, w, None), xs, False
    )  # 255 * sum |w| * 2^22 / 2^12 > 2^31
