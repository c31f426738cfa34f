// A LibTorch program that links libfused_norm (CMakeLists.txt) and calls the ops through the
// dispatcher, as a C++ user would: proves the library registers its schemas and CPU kernels
// without Python, and that they agree with ATen's own layer_norm / rms_norm.
#include <cstdio>
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace {

using LayerNormFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, c10::SymIntArrayRef, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, double);
using RmsNormFwd = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, c10::SymIntArrayRef, const std::optional<at::Tensor>&, double);

bool check(const char* what, const at::Tensor& got, const at::Tensor& want) {
  const bool ok = at::allclose(got, want, /*rtol=*/1e-5, /*atol=*/1e-5);
  std::printf("%s: %s (max |diff| %g)\n", what, ok ? "ok" : "MISMATCH",
              (got - want).abs().max().item<double>());
  return ok;
}

}  // namespace

int main() {
  auto& dispatcher = c10::Dispatcher::singleton();
  auto layer_norm =
      dispatcher.findSchemaOrThrow("fused_norm::layer_norm_fwd", "").typed<LayerNormFwd>();
  auto rms_norm = dispatcher.findSchemaOrThrow("fused_norm::rms_norm_fwd", "").typed<RmsNormFwd>();

  at::manual_seed(0);
  const at::Tensor x = at::randn({37, 3, 129});
  const at::Tensor weight = at::randn({129});
  const at::Tensor bias = at::randn({129});
  const std::vector<c10::SymInt> shape = {c10::SymInt(129)};

  const at::Tensor y_ln = std::get<0>(layer_norm.call(x, shape, weight, bias, 1e-5));
  const at::Tensor y_rms = std::get<0>(rms_norm.call(x, shape, weight, 1e-6));
  bool ok = check("layer_norm_fwd", y_ln, at::layer_norm(x, {129}, weight, bias, 1e-5));
  ok = check("rms_norm_fwd", y_rms, at::rms_norm(x, {129}, weight, 1e-6)) && ok;

  try {
    layer_norm.call(x, {c10::SymInt(7)}, std::nullopt, std::nullopt, 1e-5);
    std::printf("bad normalized_shape: no error\n");
    ok = false;
  } catch (const c10::Error& error) {
    std::printf("bad normalized_shape: raised as expected\n");
  }
  return ok ? 0 : 1;
}
