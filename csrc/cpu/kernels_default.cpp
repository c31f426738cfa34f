// The CPU kernels for any x86-64/ARM CPU: at::vec's portable Vectorized.
#define CPU_CAPABILITY DEFAULT
#include "activation_kernels.h"
#include "column_norm_kernels.h"
#include "dyt_kernels.h"
#include "gated_kernels.h"
#include "group_norm_kernels.h"
#include "layout_kernels.h"
#include "row_norm_kernels.h"
#include "softmax_kernels.h"
