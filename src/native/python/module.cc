// The extension module: the op groups register their functions in this order.
#include "common.h"

using namespace bitflow::pyb;

NB_MODULE(_native, m) {
  m.doc() =
      "bitflow native core: bit packing, binary GEMM/convolution (xor-popcount), MBBN bit "
      "planes, output transforms, pooling, float/int8 first and last layers, ISA dispatch.";

  // Resolve the default once at import: a bad BITFLOW_KERNELS fails loudly here.
  bitflow::default_kernel_set();

  bind_info(m);
  bind_real_inputs(m);
  bind_binary(m);
  bind_real(m);
  bind_dag(m);
  bind_layers(m);
  bind_float_stream(m);
  bind_survey(m);
  bind_train(m);
}
