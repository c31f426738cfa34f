// The CPU kernels for CPUs with AVX-512 (F, BW, VL, DQ) + FMA + F16C (cpu_backends.cpp checks at
// run time). Same scheme as kernels_avx2.cpp; only the target differs.
#if defined(__x86_64__) && defined(__GNUC__)
#include "baseline_includes.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
// at::vec's AVX-512 code includes sleef.h, which declares its vector functions only under the
// macros that the matching -m flags would define; the pragma sets the target but not the macros.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "activation_kernels.h"
#include "column_norm_kernels.h"
#include "dyt_kernels.h"
#include "gated_kernels.h"
#include "group_norm_kernels.h"
#include "layout_kernels.h"
#include "row_norm_kernels.h"
#include "softmax_kernels.h"
// Proof that at::vec took its AVX-512 specialisation rather than the portable one.
static_assert(std::is_convertible_v<at::vec::Vectorized<float>, __m512>, "AVX-512 Vectorized expected");
#pragma GCC pop_options
#endif
