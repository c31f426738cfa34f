// The CPU kernels for CPUs with AVX2 + FMA + F16C (cpu_backends.cpp checks at run time).
// Only x86-64 has these; elsewhere this file compiles to nothing and DEFAULT serves.
#if defined(__x86_64__) && defined(__GNUC__)
#include "baseline_includes.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// at::vec's AVX2 code includes sleef.h, which declares its AVX2 functions only under the
// macros that -mavx2 -mfma -mf16c would define; the pragma sets the target but not the macros.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "activation_kernels.h"
#include "column_norm_kernels.h"
#include "dyt_kernels.h"
#include "gated_kernels.h"
#include "group_norm_kernels.h"
#include "layout_kernels.h"
#include "row_norm_kernels.h"
#include "softmax_kernels.h"
// Proof that at::vec took its AVX2 specialisation rather than the portable one.
static_assert(std::is_convertible_v<at::vec::Vectorized<float>, __m256>, "AVX2 Vectorized expected");
#pragma GCC pop_options
#endif
