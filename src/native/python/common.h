// Shared argument checks of the Python bindings (one file per op group: info.cc, binary.cc,
// real.cc, layers.cc, float_stream.cc, dag.cc; module.cc defines the module). Every function
// validates its inputs (dtype, ndim, shape, C-contiguity, value ranges) and raises TypeError /
// ValueError with a message naming the function, the argument and the problem; computation
// runs with the GIL released.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "bitflow/binary_layer.h"
#include "bitflow/cpu.h"
#include "bitflow/elementwise.h"
#include "bitflow/float_stream.h"
#include "bitflow/kernels.h"
#include "bitflow/ops.h"
#include "../ops/parallel.h"

namespace nb = nanobind;
using namespace nb::literals;
using bitflow::KernelSet;
using bitflow::words_for;
using i64 = std::int64_t;

namespace bitflow::pyb {

using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;

inline std::string dtype_name(const nb::dlpack::dtype& d) {
  std::string base;
  switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
    case nb::dlpack::dtype_code::Int: base = "int"; break;
    case nb::dlpack::dtype_code::UInt: base = "uint"; break;
    case nb::dlpack::dtype_code::Float: base = "float"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
    case nb::dlpack::dtype_code::Complex: base = "complex"; break;
    default: base = "dtype-code-" + std::to_string(d.code) + "-"; break;
  }
  return base + std::to_string(d.bits);
}

template <class T> const char* type_name();
template <> inline const char* type_name<float>() { return "float32"; }
template <> inline const char* type_name<std::int32_t>() { return "int32"; }
template <> inline const char* type_name<std::int8_t>() { return "int8"; }
template <> inline const char* type_name<std::uint8_t>() { return "uint8"; }
template <> inline const char* type_name<std::uint64_t>() { return "uint64"; }
template <> inline const char* type_name<std::int64_t>() { return "int64"; }

inline std::string shape_str(const AnyArray& a) {
  std::string s = "(";
  for (std::size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

/// A validated, C-contiguous input view.
template <class T>
struct In {
  const T* data = nullptr;
  std::vector<i64> shape;
  i64 dim(int i) const { return shape[static_cast<std::size_t>(i < 0 ? i + static_cast<int>(shape.size()) : i)]; }
  i64 ndim() const { return static_cast<i64>(shape.size()); }
  i64 size() const {
    i64 s = 1;
    for (i64 d : shape) s *= d;
    return s;
  }
};

/// Check dtype, ndim (exact when ndim >= 0, at least -ndim when ndim < 0) and C-contiguity.
template <class T>
In<T> arg(const AnyArray& a, const char* fn, const char* name, int ndim) {
  if (a.dtype() != nb::dtype<T>()) {
    throw nb::type_error((std::string(fn) + ": '" + name + "' must have dtype " + type_name<T>() +
                          ", got " + dtype_name(a.dtype()))
                             .c_str());
  }
  const int nd = static_cast<int>(a.ndim());
  if ((ndim >= 0 && nd != ndim) || (ndim < 0 && nd < -ndim)) {
    throw nb::value_error((std::string(fn) + ": '" + name + "' must have " +
                           (ndim >= 0 ? "exactly " : "at least ") + std::to_string(ndim >= 0 ? ndim : -ndim) +
                           " dimensions, got shape " + shape_str(a))
                              .c_str());
  }
  In<T> in;
  in.shape.resize(static_cast<std::size_t>(nd));
  i64 expect = 1;
  bool empty = false;
  for (int i = nd - 1; i >= 0; --i) {
    const i64 d = static_cast<i64>(a.shape(static_cast<std::size_t>(i)));
    in.shape[static_cast<std::size_t>(i)] = d;
    if (d == 0) empty = true;
  }
  if (!empty) {
    for (int i = nd - 1; i >= 0; --i) {
      const i64 d = in.shape[static_cast<std::size_t>(i)];
      if (d != 1 && a.stride(static_cast<std::size_t>(i)) != expect) {
        throw nb::value_error((std::string(fn) + ": '" + name +
                               "' must be C-contiguous (use numpy.ascontiguousarray)")
                                  .c_str());
      }
      expect *= d;
    }
  }
  in.data = static_cast<const T*>(static_cast<const void*>(a.data()));
  return in;
}

[[noreturn]] inline void fail(const std::string& fn, const std::string& msg) {
  throw nb::value_error((fn + ": " + msg).c_str());
}

/// A freshly allocated numpy output array and its data pointer.
template <class T>
struct Out {
  T* ptr = nullptr;
  nb::ndarray<nb::numpy, T> array;
};

template <class T>
Out<T> make_out(const std::vector<i64>& shape) {
  std::vector<std::size_t> sh(shape.begin(), shape.end());
  std::size_t n = 1;
  for (std::size_t d : sh) n *= d;
  std::unique_ptr<T[]> buf(new T[n > 0 ? n : 1]);
  T* ptr = buf.get();
  nb::capsule owner(ptr, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  buf.release();
  Out<T> out;
  out.ptr = ptr;
  out.array = nb::ndarray<nb::numpy, T>(ptr, sh.size(), sh.data(), owner);
  return out;
}

inline int check_threads(const char* fn, int threads) {
  if (threads < 1 || threads > 1024) fail(fn, "threads must be in [1, 1024], got " + std::to_string(threads));
  return threads;
}

inline const KernelSet& kernels_arg(const char* fn, const std::string& name) {
  try {
    return bitflow::resolve_kernels(name);
  } catch (const std::invalid_argument& e) {
    fail(fn, std::string("kernels: ") + e.what());
  }
}

/// An integer-like object (int, numpy integer; not bool, not float) -> its value.
inline bool index_value(nb::handle h, i64& out) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr())) return false;
  nb::object v = nb::steal(PyNumber_Index(h.ptr()));
  if (!v.is_valid()) {
    PyErr_Clear();
    return false;
  }
  const long long x = PyLong_AsLongLong(v.ptr());
  if (x == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  out = static_cast<i64>(x);
  return true;
}

/// An int or a pair of ints (tuple/list) -> (first, second).
inline std::pair<i64, i64> pair_arg(const char* fn, const char* name, nb::handle h) {
  i64 a = 0, b = 0;
  if (index_value(h, a)) return {a, a};
  if (PyTuple_Check(h.ptr()) || PyList_Check(h.ptr())) {
    nb::sequence seq = nb::borrow<nb::sequence>(h);
    if (nb::len(seq) == 2) {
      nb::object first = seq[0], second = seq[1];
      if (index_value(first, a) && index_value(second, b)) return {a, b};
    }
  }
  throw nb::type_error((std::string(fn) + ": " + name + " must be an int or a pair of ints, got " +
                        nb::cast<std::string>(nb::repr(h)))
                           .c_str());
}

inline i64 check_k_bits(const char* fn, i64 k_bits, i64 kw) {
  if (kw < 1) fail(fn, "rows must have at least one 64-bit word");
  if (k_bits < 1 || k_bits > 64 * kw)
    fail(fn, "k_bits must be in [1, 64 * words] = [1, " + std::to_string(64 * kw) + "], got " + std::to_string(k_bits));
  return k_bits;
}

inline void check_planes_fit(const char* fn, i64 k_bits, i64 pa, i64 pw) {
  if (pa < 1 || pw < 1) fail(fn, "plane axes must be non-empty");
  if (pa > 16 || pw > 16) fail(fn, "at most 16 planes per operand");
  const long double bound = static_cast<long double>(k_bits) * ((1LL << pa) - 1) * ((1LL << pw) - 1);
  if (bound > static_cast<long double>(INT32_MAX))
    fail(fn, "int32 accumulator overflow: k_bits * (2^Pa - 1) * (2^Pw - 1) = " +
                 std::to_string(static_cast<long long>(bound)) + " exceeds 2^31 - 1");
}

inline std::vector<i64> with_last(const std::vector<i64>& s, i64 last) {
  std::vector<i64> r = s;
  r.back() = last;
  return r;
}

inline i64 rows_of(const std::vector<i64>& s) {
  i64 r = 1;
  for (std::size_t i = 0; i + 1 < s.size(); ++i) r *= s[i];
  return r;
}

inline void check_direction(const char* fn, const In<std::int8_t>& d, i64 o) {
  if (d.ndim() != 1 || d.dim(0) != o)
    fail(fn, "direction must have shape (" + std::to_string(o) + ",) to match the last axis");
  for (i64 c = 0; c < o; ++c)
    if (d.data[c] != 1 && d.data[c] != -1)
      fail(fn, "direction values must be +1 or -1, got " + std::to_string(static_cast<int>(d.data[c])) +
                   " at index " + std::to_string(c));
}

inline bitflow::ops::ConvGeom conv_geom(const char* fn, i64 n, i64 h, i64 w, i64 c, i64 o, i64 kh, i64 kw,
                                 std::pair<i64, i64> stride, std::pair<i64, i64> padding) {
  if (stride.first < 1 || stride.second < 1) fail(fn, "stride must be >= 1");
  if (padding.first < 0 || padding.second < 0) fail(fn, "padding must be >= 0");
  if (kh < 1 || kw < 1) fail(fn, "kernel height and width must be >= 1");
  bitflow::ops::ConvGeom g;
  g.n = n; g.h = h; g.w = w; g.c = c; g.o = o; g.kh = kh; g.kw = kw;
  g.sh = stride.first; g.sw = stride.second; g.ph = padding.first; g.pw = padding.second;
  if (h + 2 * g.ph < kh || w + 2 * g.pw < kw)
    fail(fn, "kernel " + std::to_string(kh) + "x" + std::to_string(kw) + " is larger than the padded input " +
                 std::to_string(h + 2 * g.ph) + "x" + std::to_string(w + 2 * g.pw));
  return g;
}

/// The optional float32 bias [o] of a float conv / dense layer (nullptr when absent).
inline const float* optional_bias(const char* fn, const std::optional<AnyArray>& bias, i64 o) {
  if (!bias) return nullptr;
  auto b = arg<float>(*bias, fn, "bias", 1);
  if (b.dim(0) != o) fail(fn, "bias must have shape (" + std::to_string(o) + ",)");
  return b.data;
}

/// A uint8-input conv's exact int32 sum: |sum| <= kh kw C 255 128 (int8 weights; +-1 weights
/// take the same path) must fit in int32.
inline void check_u8_fan_in(const char* fn, const bitflow::ops::ConvGeom& g) {
  if (g.kh * g.kw * g.c * 255 * 128 > INT32_MAX)
    fail(fn, "kh * kw * C = " + std::to_string(g.kh * g.kw * g.c) + " is too large for an exact int32 sum (max 65793)");
}

inline bitflow::ops::PoolGeom pool_geom(const char* fn, const std::vector<i64>& s, nb::handle kernel,
                                 nb::handle stride, nb::handle padding) {
  const auto k = pair_arg(fn, "kernel", kernel);
  const auto st = stride.is_none() ? k : pair_arg(fn, "stride", stride);
  const auto p = pair_arg(fn, "padding", padding);
  if (k.first < 1 || k.second < 1) fail(fn, "kernel must be >= 1");
  if (st.first < 1 || st.second < 1) fail(fn, "stride must be >= 1");
  if (p.first < 0 || p.second < 0 || 2 * p.first > k.first || 2 * p.second > k.second)
    fail(fn, "padding must be >= 0 and at most half the kernel size (as in PyTorch)");
  bitflow::ops::PoolGeom g;
  g.n = s[0]; g.h = s[1]; g.w = s[2]; g.c = s[3];
  g.kh = k.first; g.kw = k.second; g.sh = st.first; g.sw = st.second; g.ph = p.first; g.pw = p.second;
  if (g.h + 2 * g.ph < g.kh || g.w + 2 * g.pw < g.kw) fail(fn, "pooling window is larger than the padded input");
  return g;
}

using bitflow::ops::BinaryLayer;

/// The fixed-point first layer, prepared (a distinct Python type for the uint8 input).
struct Int8ConvLayer : BinaryLayer {
  using BinaryLayer::BinaryLayer;
};

/// A float convolution with its weights prepared once (bitflow::ops::PreparedConvF32): the
/// engine's conv2d_f32 steps (a private binding, _Conv2dF32Layer).
struct Conv2dF32Layer {
  const KernelSet* ks;
  bitflow::ops::PreparedConvF32 prep;
};

// The module's parts, in module.cc's order.
void bind_info(nb::module_& m);
void bind_real_inputs(nb::module_& m);
void bind_binary(nb::module_& m);
void bind_real(nb::module_& m);
void bind_dag(nb::module_& m);
void bind_layers(nb::module_& m);
void bind_float_stream(nb::module_& m);
void bind_survey(nb::module_& m);
void bind_train(nb::module_& m);

}  // namespace bitflow::pyb
