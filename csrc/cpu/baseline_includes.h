// What the CPU kernel headers include besides at::vec, for the per-ISA files to include first:
// compiled for the baseline target, the inline functions these headers define (shared by every
// translation unit of the library) never carry AVX instructions that a CPU without them would
// trip on.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
