# Native sources (everything but the Python bindings). Per-ISA kernels get per-file compile
# flags so the library runs on any x86-64 / aarch64 (or other) CPU; dispatch picks the best
# eligible kernel per op at run time. The whole library is never compiled with -march=native.
# Sets BF_NATIVE, BF_NATIVE_SOURCES, BF_NATIVE_DEFINITIONS, BF_NATIVE_OPTIONS; used by the
# extension (CMakeLists.txt) and the cross-compiled kernel self-test (tests/native/arm).
set(BF_NATIVE ${CMAKE_CURRENT_LIST_DIR})

set(BF_NATIVE_SOURCES
  ${BF_NATIVE}/cpu/cpu_features.cc
  ${BF_NATIVE}/kernels/ref/bgemm_ref.cc
  ${BF_NATIVE}/kernels/ref/bitpack_ref.cc
  ${BF_NATIVE}/kernels/ref/transforms_ref.cc
  ${BF_NATIVE}/kernels/ref/pool_ref.cc
  ${BF_NATIVE}/kernels/scalar/bgemm_4x4__scalar.cc
  ${BF_NATIVE}/ops/gemm_drivers.cc
  ${BF_NATIVE}/ops/parallel.cc
  ${BF_NATIVE}/ops/binary_layer.cc
  ${BF_NATIVE}/ops/elementwise.cc
  ${BF_NATIVE}/ops/float_stream.cc
  ${BF_NATIVE}/ops/input_prep.cc
  ${BF_NATIVE}/ops/u8b1_conv.cc
  ${BF_NATIVE}/ops/survey.cc
  ${BF_NATIVE}/ops/ste.cc)
set_source_files_properties(${BF_NATIVE}/ops/input_prep.cc PROPERTIES COMPILE_OPTIONS "-fno-trapping-math")

set(BF_X86 OFF)
set(BF_ARM OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64|ARM64" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(BF_ARM ON)
endif()
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(BF_X86 ON)
endif()

if(BF_X86)
  set(BF_AVX2_SOURCES
    ${BF_NATIVE}/kernels/x86/avx2/bgemm_2x4__avx2.cc
    ${BF_NATIVE}/kernels/x86/avx2/bgemm_2x16__avx2.cc
    ${BF_NATIVE}/kernels/x86/avx2/float_stream__avx2.cc
    ${BF_NATIVE}/kernels/x86/avx2/sgemm_6x16__avx2fma.cc
    ${BF_NATIVE}/kernels/x86/avx2/sgemm_2x4__avx2fma.cc
    ${BF_NATIVE}/kernels/x86/avx2/igemm_u8i8_2x4__avx2.cc
    ${BF_NATIVE}/kernels/x86/avx2/igemm_u8i8_6x16__avx2.cc
    ${BF_NATIVE}/kernels/x86/avx2/threshold_bits__avx2.cc
    ${BF_NATIVE}/kernels/x86/avx2/bitpack_f32__avx2.cc)
  # AVX-512 files get only the extensions their kernels need, so that the per-op selection
  # (cpu/cpu_features.cc, kernels/x86/kernel_sets__x86.cc) may use e.g. the bitpack kernel on
  # a CPU without VPOPCNTDQ / VNNI.
  set(BF_AVX512_SOURCES
    ${BF_NATIVE}/kernels/x86/avx512/sgemm_4x4__avx512fma.cc
    ${BF_NATIVE}/kernels/x86/avx512/bitpack_f32__avx512.cc
    ${BF_NATIVE}/kernels/x86/avx512/threshold_bits__avx512.cc
    ${BF_NATIVE}/kernels/x86/avx512/float_stream__avx512.cc
    ${BF_NATIVE}/kernels/x86/avx512/input_prep__avx512.cc
    ${BF_NATIVE}/kernels/x86/avx512/sgemm_4x48__avx512fma.cc
    ${BF_NATIVE}/kernels/x86/avx512/sgemm_gather_4x48__avx512fma.cc)
  set(BF_AVX512_VPOPCNT_SOURCES
    ${BF_NATIVE}/kernels/x86/avx512/bgemm_4x4__avx512vpopcnt.cc
    ${BF_NATIVE}/kernels/x86/avx512/bgemm_4x32__avx512vpopcnt.cc
    ${BF_NATIVE}/kernels/x86/avx512/bgemm_gather_4x32__avx512vpopcnt.cc)
  set(BF_AVX512_VNNI_SOURCES
    ${BF_NATIVE}/kernels/x86/avx512/igemm_u8i8_4x4__avx512vnni.cc
    ${BF_NATIVE}/kernels/x86/avx512/igemm_u8i8_6x48__avx512vnni.cc
    ${BF_NATIVE}/kernels/x86/avx512/igemm_u8i8_gather_6x48__avx512vnni.cc)
  list(APPEND BF_NATIVE_SOURCES ${BF_AVX2_SOURCES} ${BF_AVX512_SOURCES}
       ${BF_AVX512_VPOPCNT_SOURCES} ${BF_AVX512_VNNI_SOURCES}
       ${BF_NATIVE}/kernels/x86/kernel_sets__x86.cc)
  set_source_files_properties(${BF_NATIVE}/kernels/scalar/bgemm_4x4__scalar.cc
    PROPERTIES COMPILE_OPTIONS "-mpopcnt")
  # the target_clones of the integer residual ops: let the x86-64-v4 clones use 512-bit vectors
  # (GCC otherwise prefers 256 bits there); the other clones are unaffected
  set_source_files_properties(${BF_NATIVE}/ops/elementwise.cc ${BF_NATIVE}/ops/ste.cc
    PROPERTIES COMPILE_OPTIONS "-mprefer-vector-width=512")
  set_source_files_properties(${BF_AVX2_SOURCES}
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mpopcnt")
  # -Wno-uninitialized: GCC 12 false positive inside its own avx512 intrinsic headers (GCC PR 105593).
  set(BF_AVX512_FLAGS "-mavx512f;-mavx512bw;-mavx512vl;-mfma;-mpopcnt;-Wno-uninitialized")
  set_source_files_properties(${BF_AVX512_SOURCES} PROPERTIES COMPILE_OPTIONS "${BF_AVX512_FLAGS}")
  set_source_files_properties(${BF_AVX512_VPOPCNT_SOURCES}
    PROPERTIES COMPILE_OPTIONS "${BF_AVX512_FLAGS};-mavx512vpopcntdq")
  set_source_files_properties(${BF_AVX512_VNNI_SOURCES}
    PROPERTIES COMPILE_OPTIONS "${BF_AVX512_FLAGS};-mavx512vnni")
endif()


if(BF_ARM)
  # NEON is baseline on aarch64; only the SDOT kernel needs +dotprod (selected at run time).
  set(BF_NEON_SOURCES
    ${BF_NATIVE}/kernels/arm/neon/bgemm_4x4__neon.cc
    ${BF_NATIVE}/kernels/arm/neon/bitpack_threshold__neon.cc
    ${BF_NATIVE}/kernels/arm/neon/igemm_u8i8_4x4__neondot.cc)
  list(APPEND BF_NATIVE_SOURCES ${BF_NEON_SOURCES} ${BF_NATIVE}/kernels/arm/kernel_sets__arm.cc)
  set_source_files_properties(${BF_NATIVE}/kernels/arm/neon/igemm_u8i8_4x4__neondot.cc
    PROPERTIES COMPILE_OPTIONS "-march=armv8.2-a+dotprod")
endif()

set(BF_NATIVE_DEFINITIONS "")
if(BF_X86)
  list(APPEND BF_NATIVE_DEFINITIONS BITFLOW_HAVE_X86_KERNELS=1)
endif()
if(BF_ARM)
  list(APPEND BF_NATIVE_DEFINITIONS BITFLOW_HAVE_NEON_KERNELS=1)
endif()
set(BF_NATIVE_OPTIONS "")
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # -ffp-contract=off: no silent FMA contraction (scale_bias and the reference sgemm round
  # every product and every sum in float32; the FMA kernels use explicit intrinsics).
  set(BF_NATIVE_OPTIONS -Wall -Wextra -O3 -ffp-contract=off)
endif()
