// Training helpers: the one-pass STE forward / backward passes (bitflow/ste.h) that
// bitflow.nn.functional uses for dense CPU tensors. Every operand is a 1-D view of a tensor's
// memory (the same order for all of them); the results are written into the given outputs,
// which the caller allocates as tensors (so that autograd sees ordinary tensors, not views).
// float32, or bfloat16 passed as its int16 bit patterns (numpy has no bfloat16).
#include "bitflow/ste.h"

#include "common.h"

namespace bitflow::pyb {

template <> inline const char* type_name<std::int16_t>() { return "int16 (bfloat16 bits)"; }

namespace {

using OutArray = nb::ndarray<nb::device::cpu>;  // writable (read-only arrays are refused)

template <class T>
T* out_arg(OutArray& a, const char* fn, const char* name, i64 n) {
  if (a.dtype() != nb::dtype<T>())
    throw nb::type_error((std::string(fn) + ": '" + name + "' must have dtype " + type_name<T>() + ", got " +
                          dtype_name(a.dtype()))
                             .c_str());
  if (a.ndim() != 1 || static_cast<i64>(a.shape(0)) != n || (n > 1 && a.stride(0) != 1))
    fail(fn, std::string("'") + name + "' must be a contiguous 1-D array of length " + std::to_string(n));
  return static_cast<T*>(a.data());
}

void ste_sign(const AnyArray& x_, OutArray q_, OutArray mask_, int threads) {
  const char* fn = "ste_sign";
  check_threads(fn, threads);
  if (x_.dtype() == nb::dtype<std::int16_t>()) {
    auto x = arg<std::int16_t>(x_, fn, "x", 1);
    auto* q = out_arg<std::int16_t>(q_, fn, "q", x.size());
    auto* mask = out_arg<std::uint8_t>(mask_, fn, "mask", x.size());
    nb::gil_scoped_release release;
    bitflow::ops::ste_sign_bf16(reinterpret_cast<const std::uint16_t*>(x.data), x.size(),
                                reinterpret_cast<std::uint16_t*>(q), mask, threads);
    return;
  }
  auto x = arg<float>(x_, fn, "x", 1);
  auto* q = out_arg<float>(q_, fn, "q", x.size());
  auto* mask = out_arg<std::uint8_t>(mask_, fn, "mask", x.size());
  nb::gil_scoped_release release;
  bitflow::ops::ste_sign(x.data, x.size(), q, mask, threads);
}

void ste_gate(const AnyArray& g_, const AnyArray& mask_, OutArray y_, int threads) {
  const char* fn = "ste_gate";
  check_threads(fn, threads);
  auto mask = arg<std::uint8_t>(mask_, fn, "mask", 1);
  if (g_.dtype() == nb::dtype<std::int16_t>()) {
    auto g = arg<std::int16_t>(g_, fn, "grad", 1);
    if (mask.size() != g.size()) fail(fn, "grad and mask must have the same length");
    auto* y = out_arg<std::int16_t>(y_, fn, "out", g.size());
    nb::gil_scoped_release release;
    bitflow::ops::ste_gate_bf16(reinterpret_cast<const std::uint16_t*>(g.data), mask.data, g.size(),
                                reinterpret_cast<std::uint16_t*>(y), threads);
    return;
  }
  auto g = arg<float>(g_, fn, "grad", 1);
  if (mask.size() != g.size()) fail(fn, "grad and mask must have the same length");
  auto* y = out_arg<float>(y_, fn, "out", g.size());
  nb::gil_scoped_release release;
  bitflow::ops::ste_gate(g.data, mask.data, g.size(), y, threads);
}

void approx_sign_grad(const AnyArray& x_, const AnyArray& g_, OutArray y_, int threads) {
  const char* fn = "approx_sign_grad";
  check_threads(fn, threads);
  auto x = arg<float>(x_, fn, "x", 1);
  auto g = arg<float>(g_, fn, "grad", 1);
  if (x.size() != g.size()) fail(fn, "x and grad must have the same length");
  auto* y = out_arg<float>(y_, fn, "out", g.size());
  nb::gil_scoped_release release;
  bitflow::ops::approx_sign_grad(x.data, g.data, g.size(), y, threads);
}

}  // namespace

void bind_train(nb::module_& m) {
  m.def("ste_sign", &ste_sign, "x"_a, "q"_a, "mask"_a, "threads"_a = 1,
        "x float32 [n] (or bfloat16 bits as int16) -> q (same type) = x < 0 ? -1 : +1, mask uint8 = |x| <= 1, "
        "written into q and mask (SignSTE forward, one pass).");
  m.def("ste_gate", &ste_gate, "grad"_a, "mask"_a, "out"_a, "threads"_a = 1,
        "grad float32 [n] (or bfloat16 bits as int16), mask uint8 [n] -> out = grad * mask (SignSTE backward).");
  m.def("approx_sign_grad", &approx_sign_grad, "x"_a, "grad"_a, "out"_a, "threads"_a = 1,
        "float32 [n] x, grad -> out = max(2 - 2|x|, 0) * grad (ApproxSign backward, one pass).");
}

}  // namespace bitflow::pyb
