// Elementwise passes of the straight-through estimators (STEs) used in training
// (bitflow/nn/functional.py is the definition; these are its one-pass forms over float32 buffers
// in memory order, for dense CPU tensors). Every result is the same float32 value the PyTorch
// expression gives, element by element (the library is built with -ffp-contract=off):
//   ste_sign:  q = x < 0 ? -1 : +1 (NaN and -0.0 give +1), mask = |x| <= 1 (NaN: 0)
//   ste_gate:  y = g * float(mask)                      (SignSTE backward: the hardtanh gate)
//   ste_sign_bf16 / ste_gate_bf16: the same on bfloat16 (raw 16-bit patterns), each result the
//                    bfloat16 value PyTorch's bfloat16 arithmetic gives (a NaN product as 0x7fc0)
//   approx_sign_grad: y = max(2 - 2|x|, 0) * g, NaN in x propagating (torch.clamp_min)
//                      (Bi-Real ApproxSign backward)
#pragma once
#include <cstdint>

namespace bitflow::ops {

void ste_sign(const float* x, std::int64_t n, float* q, std::uint8_t* mask, int threads = 1);
void ste_gate(const float* g, const std::uint8_t* mask, std::int64_t n, float* y, int threads = 1);
void ste_sign_bf16(const std::uint16_t* x, std::int64_t n, std::uint16_t* q, std::uint8_t* mask, int threads = 1);
void ste_gate_bf16(const std::uint16_t* g, const std::uint8_t* mask, std::int64_t n, std::uint16_t* y,
                   int threads = 1);
void approx_sign_grad(const float* x, const float* g, std::int64_t n, float* y, int threads = 1);

}  // namespace bitflow::ops
