// Replay of a model run recorded on another machine (dump_model.py): every op of the graph
// is run with each kernel set on the recorded input of that op and compared with the
// recorded output (bit for bit for integers and bits; float ops within a documented bound),
// then the whole chain is run from the input image to the logits with the set's own values
// and its predictions are compared with the recorded ones.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bitflow/kernels.h"
#include "bitflow/ops.h"

namespace {

using i64 = std::int64_t;

struct Tensor {
  std::string dtype;
  std::vector<i64> shape;
  std::vector<unsigned char> bytes;
  i64 dim(int i) const { return shape[static_cast<std::size_t>(i < 0 ? i + static_cast<int>(shape.size()) : i)]; }
  i64 count() const {
    i64 n = 1;
    for (i64 d : shape) n *= d;
    return n;
  }
  template <class T> const T* data() const { return reinterpret_cast<const T*>(bytes.data()); }
  template <class T> T* data() { return reinterpret_cast<T*>(bytes.data()); }
};

template <class T>
Tensor make(const std::string& dtype, std::vector<i64> shape) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes.assign(static_cast<std::size_t>(t.count()) * sizeof(T), 0);
  return t;
}

struct Op {
  std::string type, in, out;
  std::map<std::string, std::vector<i64>> attrs;
  std::map<std::string, std::string> params;
};

struct Recording {
  std::map<std::string, Tensor> tensors;
  std::vector<Op> ops;
  std::string input, output;
};

std::size_t item_size(const std::string& dtype) {
  if (dtype == "u8" || dtype == "i8") return 1;
  if (dtype == "i32" || dtype == "f32") return 4;
  if (dtype == "u64" || dtype == "i64") return 8;
  throw std::runtime_error("replay: unknown dtype " + dtype);
}

Recording load(const std::string& dir) {
  std::ifstream data(dir + "/data.bin", std::ios::binary);
  std::ifstream manifest(dir + "/manifest.txt");
  if (!data || !manifest) throw std::runtime_error("replay: cannot read " + dir + "/{manifest.txt,data.bin}");
  Recording r;
  std::string line;
  while (std::getline(manifest, line)) {
    std::istringstream ss(line);
    std::string kind;
    ss >> kind;
    if (kind == "tensor") {
      std::string name;
      Tensor t;
      int ndim = 0;
      ss >> name >> t.dtype >> ndim;
      t.shape.resize(static_cast<std::size_t>(ndim));
      for (auto& d : t.shape) ss >> d;
      i64 offset = 0;
      ss >> offset;
      t.bytes.resize(static_cast<std::size_t>(t.count()) * item_size(t.dtype));
      data.seekg(offset);
      data.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
      if (!data) throw std::runtime_error("replay: data.bin too short for " + name);
      r.tensors[name] = std::move(t);
    } else if (kind == "input") {
      ss >> r.input;
    } else if (kind == "output") {
      ss >> r.output;
    } else if (kind == "op") {
      Op op;
      ss >> op.type >> op.in >> op.out;
      std::string kv;
      while (ss >> kv) {
        const auto eq = kv.find('=');
        const std::string key = kv.substr(0, eq), val = kv.substr(eq + 1);
        if (key.rfind("param:", 0) == 0) {
          op.params[key.substr(6)] = val;
        } else {
          std::vector<i64> v;
          std::istringstream vs(val);
          std::string item;
          while (std::getline(vs, item, ',')) v.push_back(std::stoll(item));
          op.attrs[key] = v;
        }
      }
      r.ops.push_back(std::move(op));
    }
  }
  return r;
}

/// One op of the recorded graph with kernel set ks (the engine's op-by-op semantics).
Tensor run_op(const bitflow::KernelSet& ks, const Recording& rec, const Op& op, const Tensor& x, int threads) {
  namespace ops = bitflow::ops;
  const auto param = [&](const char* role) -> const Tensor& { return rec.tensors.at(op.params.at(role)); };
  const auto attr = [&](const char* key, std::size_t i) { return op.attrs.at(key)[i]; };
  if (op.type == "conv2d_u8i8" || op.type == "bconv2d") {
    const Tensor& w = param("w");
    ops::ConvGeom g;
    g.n = x.dim(0); g.h = x.dim(1); g.w = x.dim(2);
    g.o = w.dim(0); g.kh = w.dim(1); g.kw = w.dim(2);
    g.sh = attr("stride", 0); g.sw = attr("stride", 1); g.ph = attr("padding", 0); g.pw = attr("padding", 1);
    g.c = op.type == "bconv2d" ? attr("channels", 0) : w.dim(3);
    Tensor out = make<std::int32_t>("i32", {g.n, g.ho(), g.wo(), g.o});
    if (op.type == "conv2d_u8i8")
      ops::conv2d_u8i8(ks, threads, x.data<std::uint8_t>(), w.data<std::int8_t>(), g, out.data<std::int32_t>());
    else
      ops::bconv2d_planes(ks, threads, x.data<std::uint64_t>(), 1, w.data<std::uint64_t>(), 1, g,
                          static_cast<int>(attr("pad_value", 0)), out.data<std::int32_t>());
    return out;
  }
  if (op.type == "maxpool_i32" || op.type == "maxpool_bits") {
    ops::PoolGeom g;
    g.n = x.dim(0); g.h = x.dim(1); g.w = x.dim(2); g.c = x.dim(3);
    g.kh = attr("kernel", 0); g.kw = attr("kernel", 1); g.sh = attr("stride", 0); g.sw = attr("stride", 1);
    g.ph = attr("padding", 0); g.pw = attr("padding", 1);
    if (op.type == "maxpool_bits") {
      Tensor out = make<std::uint64_t>("u64", {g.n, g.ho(), g.wo(), g.c});
      ops::maxpool_bits(x.data<std::uint64_t>(), g, attr("and_op", 0) != 0, out.data<std::uint64_t>(), threads);
      return out;
    }
    Tensor out = make<std::int32_t>("i32", {g.n, g.ho(), g.wo(), g.c});
    ops::maxpool_i32(x.data<std::int32_t>(), g, out.data<std::int32_t>(), threads);
    return out;
  }
  if (op.type == "flatten") {  // int32 [n, h, w, c] -> [n, h * w * c]: the same memory
    Tensor out = x;
    out.shape = {x.dim(0), x.count() / x.dim(0)};
    return out;
  }
  if (op.type == "threshold_bits") {  // the kernel set's range form, as the engine runs it
    const Tensor& thr = param("thr");
    const Tensor& dir = param("direction");
    const i64 o = x.dim(-1), rows = x.count() / o;
    std::vector<std::int32_t> lo(static_cast<std::size_t>(o)), hi(lo.size());
    for (i64 c = 0; c < o; ++c) {
      const bool up = dir.data<std::int8_t>()[c] > 0;
      lo[c] = up ? thr.data<std::int32_t>()[c] : INT32_MIN;
      hi[c] = up ? INT32_MAX : thr.data<std::int32_t>()[c];
    }
    std::vector<i64> shape = x.shape;
    shape.back() = bitflow::words_for(o);
    Tensor out = make<std::uint64_t>("u64", shape);
    ks.threshold_bits(x.data<std::int32_t>(), rows, o, lo.data(), hi.data(), out.data<std::uint64_t>());
    return out;
  }
  if (op.type == "bdense") {
    const Tensor& w = param("w");
    Tensor out = make<std::int32_t>("i32", {x.dim(0), w.dim(0)});
    ops::bgemm(ks, threads, x.data<std::uint64_t>(), w.data<std::uint64_t>(), x.dim(0), w.dim(0), w.dim(1),
               static_cast<std::int32_t>(attr("k_bits", 0)), out.data<std::int32_t>());
    return out;
  }
  if (op.type == "scale_bias") {
    const i64 o = x.dim(-1);
    Tensor out = make<float>("f32", x.shape);
    ops::scale_bias(x.data<std::int32_t>(), x.count() / o, o, param("scale").data<float>(), param("bias").data<float>(),
                    out.data<float>());
    return out;
  }
  if (op.type == "relu_f32" || op.type == "affine_f32") {
    Tensor out = make<float>("f32", x.shape);
    const i64 o = x.dim(-1);
    for (i64 i = 0; i < x.count(); ++i) {
      const float v = x.data<float>()[i];
      out.data<float>()[i] = op.type == "relu_f32"
                                 ? (v > 0.0f ? v : 0.0f)
                                 : v * param("scale").data<float>()[i % o] + param("bias").data<float>()[i % o];
    }
    return out;
  }
  if (op.type == "dense_f32") {
    const Tensor& w = param("w");
    Tensor out = make<float>("f32", {x.dim(0), w.dim(0)});
    ops::dense_f32(ks, threads, x.data<float>(), w.data<float>(),
                   op.params.count("bias") ? param("bias").data<float>() : nullptr, x.dim(0), w.dim(1), w.dim(0),
                   out.data<float>());
    return out;
  }
  throw std::runtime_error("replay: op type " + op.type + " is not supported by the replay");
}

/// Float ops: |a - b| <= 1e-5 (|b| + 1) (sums of a few hundred float32 products in another
/// order; see the float tolerance in ops.h); everything else bit for bit.
bool equal(const Tensor& a, const Tensor& b) {
  if (a.dtype != b.dtype || a.shape != b.shape) return false;
  if (a.dtype != "f32") return a.bytes == b.bytes;
  for (i64 i = 0; i < a.count(); ++i) {
    const float x = a.data<float>()[i], y = b.data<float>()[i];
    if (!(std::fabs(x - y) <= 1e-5f * (std::fabs(y) + 1.0f))) return false;
  }
  return true;
}

}  // namespace

void replay_model(const std::string& dir, const std::vector<const bitflow::KernelSet*>& sets,
                  const std::function<void(bool, const std::string&)>& check) {
  const Recording rec = load(dir);
  const Tensor& pred = rec.tensors.at("predictions");
  for (const bitflow::KernelSet* ks : sets) {
    for (int threads : {1, 3}) {
      const std::string who = std::string(ks->name) + " threads=" + std::to_string(threads) + " replay ";
      for (const Op& op : rec.ops) {
        const Tensor got = run_op(*ks, rec, op, rec.tensors.at(op.in), threads);
        check(equal(got, rec.tensors.at(op.out)), who + op.type + " " + op.out);
      }
      Tensor cur = rec.tensors.at(rec.input);
      for (const Op& op : rec.ops) cur = run_op(*ks, rec, op, cur, threads);
      const i64 n = cur.dim(0), classes = cur.dim(1);
      i64 same = 0;
      for (i64 i = 0; i < n; ++i) {
        const float* row = cur.data<float>() + i * classes;
        i64 best = 0;
        for (i64 c = 1; c < classes; ++c)
          if (row[c] > row[best]) best = c;
        same += best == pred.data<std::int64_t>()[i];
      }
      std::printf("replay %s threads=%d: %lld of %lld predictions equal the recorded ones\n", ks->name, threads,
                  static_cast<long long>(same), static_cast<long long>(n));
      check(same == n, who + "predictions");
    }
  }
}
