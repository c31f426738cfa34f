#include "column_norm.h"

#include <algorithm>
#include <limits>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

namespace fused_norm {
namespace {

// How an (N, C, *) tensor is laid out for the kernels, as the [A, C, B] of column_norm_params.h.
// Two memory orders are served as they are: contiguous (A = N, B = prod(*)) and channels-last,
// i.e. (N, *, C) contiguous (A = N * prod(*), B = 1): channels_last, channels_last_3d and their
// 3-D analogue (a transposed (N, L, C) sequence). Any other strides are copied to contiguous
// first, and a strided slice of a channels_last tensor to dense channels_last. Every tensor of
// a call (grad_out, the ReLU output, the residual) is brought to the input's order, and the
// kernels write their outputs in it; `output` then gives each the memory format torch's
// batch_norm gives it (channels_last_format: contiguous for the 3-D analogue).
struct ColumnLayout {
  bool channels_last = false;                     // the kernels walk (N, *, C)
  std::optional<at::MemoryFormat> output_format;  // channels-last input torch keeps so
  ColumnShape shape{};

  static ColumnLayout of(const at::Tensor& input) {
    ColumnLayout layout;
    layout.output_format = channels_last_format(input);
    // A contiguous tensor is served as NCHW even when it is also channels-last (C == 1 or
    // spatial == 1), the common case.
    layout.set_channels_last(input, layout.output_format.has_value() ||
                                        (input.dim() > 2 && !input.is_contiguous() &&
                                         input.movedim(1, -1).is_contiguous()));
    return layout;
  }

  // The layout of a backward pass: the input's, except where torch's results are contiguous for
  // a channels-last input (the 3-D analogue: a transposed (N, L, C) sequence). There grad_out
  // comes contiguous, and the kernels walk the contiguous layout: transposing the input once
  // replaces transposing grad_out in and dx (and g) out.
  static ColumnLayout of_gradient(const at::Tensor& input) {
    ColumnLayout layout = of(input);
    if (!layout.output_format.has_value()) layout.set_channels_last(input, false);
    return layout;
  }

  // `t` (of the input's sizes) with its memory in this layout: a view when it already is, else
  // a copy (fused_norm::contiguous_copy's transpose for a channels-last `t` made contiguous).
  at::Tensor arrange(const at::Tensor& t) const {
    if (!channels_last) return t.is_contiguous() ? t : contiguous_copy(t);
    return t.movedim(1, -1).contiguous().movedim(-1, 1);
  }

  // A tensor of its own with like's sizes in this layout. Not a permuted view of a buffer:
  // autograd forbids in-place ops (a ReLU(inplace=True) after the norm) on an output that is a
  // view created inside a Function.
  at::Tensor empty(const at::Tensor& like) const {
    if (!channels_last) return at::empty(like.sizes(), like.options());
    // Channels innermost, then the other dims from last to first.
    std::vector<int64_t> strides(like.dim());
    int64_t stride = 1;
    strides[1] = stride;
    stride *= std::max<int64_t>(like.size(1), 1);
    for (int64_t d = like.dim() - 1; d >= 0; --d) {
      if (d == 1) continue;
      strides[d] = stride;
      stride *= std::max<int64_t>(like.size(d), 1);
    }
    return at::empty_strided(like.sizes(), strides, like.options());
  }

  // A result of the kernels (from `empty`) in torch's memory format: the 3-D analogue of
  // channels-last (and a permuted 6-D or wider tensor) transposed to contiguous, by
  // fused_norm::contiguous_copy (a blocked transpose on CPU, where torch's copy walks element by
  // element). The forward kernels run on the input where it lies; this is torch's copy of the
  // input moved to the output.
  at::Tensor output(const at::Tensor& result) const {
    if (!channels_last || output_format.has_value()) return result;
    return contiguous_copy(result);
  }

  int64_t per_channel() const { return shape.A * shape.B; }
  bool empty_problem() const { return shape.A * shape.C * shape.B == 0; }

 private:
  static at::Tensor contiguous_copy(const at::Tensor& t) {
    static const auto copy = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("fused_norm::contiguous_copy", "")
                                 .typed<at::Tensor(const at::Tensor&)>();
    return copy.call(t);
  }

  void set_channels_last(const at::Tensor& input, bool walk_channels_last) {
    const int64_t N = input.size(0), C = input.size(1);
    int64_t spatial = 1;
    for (int64_t d = 2; d < input.dim(); ++d) spatial *= input.size(d);
    channels_last = walk_channels_last;
    shape = channels_last ? ColumnShape{N * spatial, C, 1} : ColumnShape{N, C, spatial};
  }
};

void check_input(const at::Tensor& input) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      is_kernel_dtype(input.scalar_type()),
      message("\"batch_norm\" not implemented for '", input.scalar_type(), "'"));
  TORCH_CHECK(input.dim() >= 2,
              message("batch_norm: expected input with at least 2 dimensions (N, C, *), but got "
                      "input of size ",
                      input.sizes()));
}

// Per-channel tensors (weight, bias, running statistics): C elements on the input's device, in
// the input's dtype or float32 with a 16-bit input (torch's mixed-precision rule and wording).
void check_per_channel(const char* name, const at::Tensor& t, const at::Tensor& input) {
  const int64_t C = input.size(1);
  TORCH_CHECK(t.numel() == C,
              message(name, " should contain ", C, " elements not ", t.numel()));
  check_same_device(input, t);
  check_mixed_dtype(t, input);
}

// Tensors of the input's shape that come with it (relu_output, residual).
void check_like_input(const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK(t.sizes().equals(input.sizes()),
              message("batch_norm: expected ", name, " of size ", input.sizes(),
                      " (the input's), but got ", t.sizes()));
  TORCH_CHECK(t.scalar_type() == input.scalar_type(),
              message("batch_norm: expected ", name, " of dtype ", input.scalar_type(),
                      " (the input's), but got ", t.scalar_type()));
  check_same_device(input, t);
}

// Statistics for the kernels: [C] contiguous in the opmath dtype (tiny copies when the running
// statistics are kept in another dtype).
at::Tensor stats_for_kernel(const at::Tensor& t, const at::Tensor& input) {
  const at::ScalarType dtype = stats_dtype(input.scalar_type());
  if (t.dim() == 1 && t.scalar_type() == dtype && t.is_contiguous()) return t;  // the usual case
  return t.reshape({-1}).to(dtype).contiguous();
}

void check_params(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                  const std::optional<at::Tensor>& bias) {
  if (defined(weight)) check_per_channel("weight", *weight, input);
  if (defined(bias)) check_per_channel("bias", *bias, input);
  check_same_param_dtype(input, weight, bias);
}

std::optional<at::Tensor> flat_or_none(const std::optional<at::Tensor>& t) {
  if (!defined(t)) return std::nullopt;
  if (t->dim() == 1 && t->is_contiguous()) return t;
  return t->reshape({-1}).contiguous();
}

void check_elemt_operands(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& residual) {
  check_params(input, weight, bias);
  if (defined(residual)) check_like_input("residual", *residual, input);
}

// batch_norm_elemt after its checks.
at::Tensor elemt(const ColumnNormBackend& backend, const at::Tensor& input,
                 const at::Tensor& mean_in, const at::Tensor& var_in,
                 const std::optional<at::Tensor>& weight_in,
                 const std::optional<at::Tensor>& bias_in,
                 const std::optional<at::Tensor>& residual_in, double eps, bool relu) {
  c10::DeviceGuard device_guard(input.device());
  const ColumnLayout layout = ColumnLayout::of(input);
  at::Tensor y = layout.empty(input);
  if (layout.empty_problem()) return layout.output(y);
  const at::Tensor x = layout.arrange(input);
  const at::Tensor mean = stats_for_kernel(mean_in, input);
  const at::Tensor var = stats_for_kernel(var_in, input);
  const std::optional<at::Tensor> weight = flat_or_none(weight_in);
  const std::optional<at::Tensor> bias = flat_or_none(bias_in);
  const at::Tensor residual = defined(residual_in) ? layout.arrange(*residual_in) : at::Tensor();
  ColumnNormElemtParams p{};
  p.x = x.const_data_ptr();
  p.residual = residual.defined() ? residual.const_data_ptr() : nullptr;
  p.mean = mean.const_data_ptr();
  p.var = var.const_data_ptr();
  p.weight = data_or_null(weight);
  p.bias = data_or_null(bias);
  p.y = y.mutable_data_ptr();
  p.shape = layout.shape;
  p.eps = eps;
  p.x_dtype = to_dtype(x.scalar_type());
  p.param_dtype = param_dtype_of(x, weight, bias);
  p.relu = relu;
  backend.elemt(p);
  return layout.output(y);
}

// Elements per channel: what the batch statistics of `input` cover.
int64_t per_channel_count(const at::Tensor& input) {
  return input.size(1) == 0 ? 0 : input.numel() / input.size(1);
}

// torch's checks of batch statistics, in its words (torch.nn.functional.batch_norm raises them
// as ValueError in Python).
void check_training(const at::Tensor& input, double eps) {
  TORCH_CHECK_VALUE(per_channel_count(input) != 1,
                    message("Expected more than 1 value per channel when training, got input "
                            "size torch.Size(",
                            input.sizes(), ")"));
  TORCH_CHECK_VALUE(eps > 0,
                    message("batch_norm eps must be positive during training, but got ", eps));
}

// torch's update: running = (1 - momentum) * running + momentum * batch, with the unbiased batch
// variance. An empty batch leaves the running statistics as they are (torch's kernels do the
// same).
void update_running_stats(const std::optional<at::Tensor>& running_mean,
                          const std::optional<at::Tensor>& running_var, const at::Tensor& mean,
                          const at::Tensor& var, int64_t count, double momentum) {
  if (count == 0) return;
  if (defined(running_mean)) {
    running_mean->lerp_(mean.view(running_mean->sizes()).to(running_mean->scalar_type()),
                        momentum);
  }
  if (defined(running_var)) {
    const double bessel =
        static_cast<double>(count) / static_cast<double>(std::max<int64_t>(count - 1, 1));
    running_var->lerp_(var.mul(bessel).view(running_var->sizes()).to(running_var->scalar_type()),
                       momentum);
  }
}

// The tensors the backward passes read, in the kernels' layout, kept alive while they run.
struct BwdOperands {
  ColumnLayout layout;
  at::Tensor x, dy, y, mean;  // y: the ReLU output, or undefined

  BwdOperands(const ColumnLayout& input_layout, const at::Tensor& input,
              const at::Tensor& grad_out, const at::Tensor& mean_in,
              const std::optional<at::Tensor>& relu_output)
      : layout(input_layout),
        x(layout.arrange(input)),
        dy(layout.arrange(grad_out)),
        y(defined(relu_output) ? layout.arrange(*relu_output) : at::Tensor()),
        mean(stats_for_kernel(mean_in, input)) {}
};

// The sums of the reduction pass, and the residual's gradient g when it is wanted (only with a
// ReLU: without one it is grad_out itself, which the caller uses directly).
struct BwdSums {
  at::Tensor sum_dy, sum_dy_xmu, g;

  BwdSums(const at::Tensor& input, const ColumnLayout& layout, bool write_g)
      : sum_dy(at::empty({layout.shape.C},
                         input.options().dtype(stats_dtype(input.scalar_type())))),
        sum_dy_xmu(at::empty_like(sum_dy)),
        g(write_g ? layout.empty(input) : at::empty({0}, input.options())) {}
};

ColumnNormBwdReduceParams reduce_params(const ColumnNormBackend& backend, const BwdOperands& o,
                                        BwdSums& sums, bool write_g) {
  ColumnNormBwdReduceParams p{};
  p.dy = o.dy.const_data_ptr();
  p.x = o.x.const_data_ptr();
  p.y = o.y.defined() ? o.y.const_data_ptr() : nullptr;
  p.mean = o.mean.const_data_ptr();
  p.sum_dy = sums.sum_dy.mutable_data_ptr();
  p.sum_dy_xmu = sums.sum_dy_xmu.mutable_data_ptr();
  p.g = write_g ? sums.g.mutable_data_ptr() : nullptr;
  p.shape = o.layout.shape;
  p.x_dtype = to_dtype(o.x.scalar_type());
  p.parallelism = backend.parallelism(o.x);
  return p;
}

// The dx pass's parameters; sum_dy and sum_dy_xmu undefined in eval. The kernel reads them and
// var, weight (kept alive by the caller) through the returned pointers.
ColumnNormBwdElemtParams elemt_params(const BwdOperands& o, const at::Tensor& var,
                                      const std::optional<at::Tensor>& weight,
                                      const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu,
                                      at::Tensor& dx, double eps, int64_t count) {
  ColumnNormBwdElemtParams p{};
  p.dy = o.dy.const_data_ptr();
  p.x = o.x.const_data_ptr();
  p.y = o.y.defined() ? o.y.const_data_ptr() : nullptr;
  p.mean = o.mean.const_data_ptr();
  p.var = var.const_data_ptr();
  p.weight = data_or_null(weight);
  p.sum_dy = sum_dy.defined() ? sum_dy.const_data_ptr() : nullptr;
  p.sum_dy_xmu = sum_dy_xmu.defined() ? sum_dy_xmu.const_data_ptr() : nullptr;
  p.dx = dx.mutable_data_ptr();
  p.shape = o.layout.shape;
  p.eps = eps;
  p.count = static_cast<double>(count);
  p.x_dtype = to_dtype(o.x.scalar_type());
  p.param_dtype = param_dtype_of(o.x, weight, std::nullopt);
  return p;
}

void check_bwd_operands(const at::Tensor& grad_out, const at::Tensor& input,
                        const at::Tensor& mean, const std::optional<at::Tensor>& relu_output) {
  check_input(input);
  check_grad_out("batch_norm", grad_out, input.sizes(), input);
  check_per_channel("mean", mean, input);
  if (defined(relu_output)) check_like_input("relu_output", *relu_output, input);
}

// The reduction pass after its checks, on a non-empty problem.
void run_bwd_reduce(const ColumnNormBackend& backend, ColumnNormBwdReduceParams& p,
                    const at::Tensor& like) {
  const at::Tensor workspace =
      workspace_for(like, backend.reduce_workspace_bytes(p.shape, p.x_dtype, p.parallelism));
  if (workspace.defined()) p.workspace = workspace.mutable_data_ptr();
  backend.bwd_reduce(p);
}

// Training's backward kernels on a non-empty problem: one backend call where the backend has
// one that takes this shape, else the reduction and then the dx pass.
void run_training_bwd(const ColumnNormBackend& backend, const BwdOperands& operands,
                      const at::Tensor& var_in, const std::optional<at::Tensor>& weight_in,
                      BwdSums& sums, at::Tensor& dx, bool write_g, double eps) {
  const at::Tensor var = stats_for_kernel(var_in, operands.x);
  const std::optional<at::Tensor> weight = flat_or_none(weight_in);
  ColumnNormBwdReduceParams reduce = reduce_params(backend, operands, sums, write_g);
  ColumnNormBwdElemtParams elemt =
      elemt_params(operands, var, weight, sums.sum_dy, sums.sum_dy_xmu, dx, eps,
                   operands.layout.per_channel());
  if (backend.bwd_fused != nullptr && backend.bwd_fused(reduce, elemt)) return;
  run_bwd_reduce(backend, reduce, operands.x);
  if (write_g) {
    // The dx pass reads the masked gradient just written in place of grad_out and the ReLU
    // output: one stream of the input's size fewer.
    elemt.dy = sums.g.const_data_ptr();
    elemt.y = nullptr;
  }
  backend.bwd_elemt(elemt);
}

// Training's backward after its checks: the sums (with the residual's gradient when
// want_grad_residual) and dx, those two in torch's memory format.
std::tuple<BwdSums, at::Tensor> training_bwd(const ColumnNormBackend& backend,
                                             const at::Tensor& grad_out, const at::Tensor& input,
                                             const at::Tensor& mean, const at::Tensor& var_in,
                                             const std::optional<at::Tensor>& weight_in,
                                             const std::optional<at::Tensor>& relu_output,
                                             bool want_grad_residual, double eps) {
  check_bwd_operands(grad_out, input, mean, relu_output);
  check_per_channel("var", var_in, input);
  check_params(input, weight_in, std::nullopt);
  c10::DeviceGuard device_guard(input.device());
  const ColumnLayout layout = ColumnLayout::of_gradient(input);
  const bool write_g = want_grad_residual && defined(relu_output);
  BwdSums sums(input, layout, write_g);
  at::Tensor dx = layout.empty(input);
  if (layout.empty_problem()) {
    sums.sum_dy.zero_();
    sums.sum_dy_xmu.zero_();
  } else {
    run_training_bwd(backend, BwdOperands(layout, input, grad_out, mean, relu_output), var_in,
                     weight_in, sums, dx, write_g, eps);
  }
  if (write_g) sums.g = layout.output(sums.g);
  return {sums, layout.output(dx)};
}

}  // namespace

Tensor2 batch_norm_stats(const ColumnNormBackend& backend, const at::Tensor& input) {
  check_input(input);
  c10::DeviceGuard device_guard(input.device());
  const ColumnLayout layout = ColumnLayout::of(input);
  const auto options = input.options().dtype(stats_dtype(input.scalar_type()));
  at::Tensor mean = at::empty({layout.shape.C}, options);
  at::Tensor var = at::empty({layout.shape.C}, options);
  if (layout.shape.C == 0) return {mean, var};
  if (layout.per_channel() == 0) {
    // torch's batch statistics of an empty batch.
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {mean, var};
  }
  const at::Tensor x = layout.arrange(input);
  ColumnStatsParams p{};
  p.x = x.const_data_ptr();
  p.mean = mean.mutable_data_ptr();
  p.var = var.mutable_data_ptr();
  p.shape = layout.shape;
  p.x_dtype = to_dtype(x.scalar_type());
  p.parallelism = backend.parallelism(x);
  const at::Tensor workspace =
      workspace_for(x, backend.reduce_workspace_bytes(p.shape, p.x_dtype, p.parallelism));
  if (workspace.defined()) p.workspace = workspace.mutable_data_ptr();
  backend.stats(p);
  return {mean, var};
}

at::Tensor batch_norm_elemt(const ColumnNormBackend& backend, const at::Tensor& input,
                            const at::Tensor& mean, const at::Tensor& var,
                            const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, double eps, bool relu) {
  check_input(input);
  check_per_channel("running_mean", mean, input);
  check_per_channel("running_var", var, input);
  check_elemt_operands(input, weight, bias, residual);
  return elemt(backend, input, mean, var, weight, bias, residual, eps, relu);
}

Tensor3 batch_norm_bwd_reduce(const ColumnNormBackend& backend, const at::Tensor& grad_out,
                              const at::Tensor& input, const at::Tensor& mean,
                              const std::optional<at::Tensor>& relu_output,
                              bool want_grad_residual) {
  check_bwd_operands(grad_out, input, mean, relu_output);
  c10::DeviceGuard device_guard(input.device());
  const ColumnLayout layout = ColumnLayout::of_gradient(input);
  const bool write_g = want_grad_residual && defined(relu_output);
  BwdSums sums(input, layout, write_g);
  if (layout.empty_problem()) {
    sums.sum_dy.zero_();
    sums.sum_dy_xmu.zero_();
  } else {
    const BwdOperands operands(layout, input, grad_out, mean, relu_output);
    ColumnNormBwdReduceParams p = reduce_params(backend, operands, sums, write_g);
    run_bwd_reduce(backend, p, operands.x);
  }
  if (write_g) sums.g = layout.output(sums.g);
  return {sums.sum_dy, sums.sum_dy_xmu, sums.g};
}

at::Tensor batch_norm_bwd_elemt(const ColumnNormBackend& backend, const at::Tensor& grad_out,
                                const at::Tensor& input, const at::Tensor& mean,
                                const at::Tensor& var_in,
                                const std::optional<at::Tensor>& weight_in,
                                const std::optional<at::Tensor>& relu_output,
                                const std::optional<at::Tensor>& sum_dy_in,
                                const std::optional<at::Tensor>& sum_dy_xmu_in, double eps,
                                int64_t count) {
  check_bwd_operands(grad_out, input, mean, relu_output);
  check_per_channel("var", var_in, input);
  check_params(input, weight_in, std::nullopt);
  TORCH_CHECK(defined(sum_dy_in) == defined(sum_dy_xmu_in),
              "batch_norm_bwd_elemt: sum_dy and sum_dy_xmu are given together (training) or "
              "not at all (eval)");
  const bool training = defined(sum_dy_in);
  if (training) {
    check_per_channel("sum_dy", *sum_dy_in, input);
    check_per_channel("sum_dy_xmu", *sum_dy_xmu_in, input);
  }
  c10::DeviceGuard device_guard(input.device());
  const ColumnLayout layout = ColumnLayout::of_gradient(input);
  at::Tensor dx = layout.empty(input);
  if (layout.empty_problem()) return layout.output(dx);
  // A non-empty input counts at least its own elements (more with SyncBatchNorm).
  TORCH_CHECK(!training || count >= layout.per_channel(),
              message("batch_norm_bwd_elemt: count must be at least the ", layout.per_channel(),
                      " elements per channel of the input, but got ", count));
  const BwdOperands operands(layout, input, grad_out, mean, relu_output);
  const at::Tensor var = stats_for_kernel(var_in, input);
  const std::optional<at::Tensor> weight = flat_or_none(weight_in);
  const at::Tensor sum_dy = training ? stats_for_kernel(*sum_dy_in, input) : at::Tensor();
  const at::Tensor sum_dy_xmu = training ? stats_for_kernel(*sum_dy_xmu_in, input) : at::Tensor();
  backend.bwd_elemt(
      elemt_params(operands, var, weight, sum_dy, sum_dy_xmu, dx, eps, count));
  return layout.output(dx);
}

Tensor3 batch_norm_fwd(const ColumnNormBackend& backend, const at::Tensor& input,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual,
                       const std::optional<at::Tensor>& running_mean,
                       const std::optional<at::Tensor>& running_var, bool training,
                       double momentum, double eps, bool relu) {
  check_input(input);
  // Every check before the running statistics change: a call that fails leaves them as they were.
  if (defined(running_mean)) check_per_channel("running_mean", *running_mean, input);
  if (defined(running_var)) check_per_channel("running_var", *running_var, input);
  check_elemt_operands(input, weight, bias, residual);
  if (!training) {
    TORCH_CHECK(defined(running_mean) && defined(running_var),
                "running_mean must be defined in evaluation mode");
    const auto options = input.options().dtype(stats_dtype(input.scalar_type()));
    return {elemt(backend, input, *running_mean, *running_var, weight, bias, residual, eps, relu),
            at::empty({0}, options), at::empty({0}, options)};
  }
  check_training(input, eps);
  auto [mean, var] = batch_norm_stats(backend, input);
  update_running_stats(running_mean, running_var, mean, var, per_channel_count(input), momentum);
  return {elemt(backend, input, mean, var, weight, bias, residual, eps, relu), mean, var};
}

Tensor4 batch_norm_bwd(const ColumnNormBackend& backend, const at::Tensor& grad_out,
                       const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& relu_output, double eps, bool training,
                       std::array<bool, 4> output_mask) {
  const bool need_input = output_mask[0];
  const bool need_weight = output_mask[1] && defined(weight);
  const bool need_bias = output_mask[2] && defined(bias);
  const bool need_residual = output_mask[3] && defined(relu_output);
  // Unwanted outputs are empty, each its own tensor: outputs of an op must not alias.
  const auto unwanted = [&] { return at::empty({0}, input.options()); };
  at::Tensor grad_input, grad_weight, grad_bias, grad_residual;
  // The reduction pass also writes the residual's gradient (grad_out masked by the ReLU): it
  // runs whenever that is wanted, even when its sums are not.
  at::Tensor sum_dy, sum_dy_xmu;
  if (training && need_input) {
    auto [sums, dx] = training_bwd(backend, grad_out, input, mean, var, weight, relu_output,
                                   need_residual, eps);
    sum_dy = sums.sum_dy;
    sum_dy_xmu = sums.sum_dy_xmu;
    if (need_residual) grad_residual = sums.g;
    grad_input = dx;
  } else if (need_weight || need_bias || need_residual) {
    auto [sums_dy, sums_dy_xmu, masked] =
        batch_norm_bwd_reduce(backend, grad_out, input, mean, relu_output, need_residual);
    sum_dy = sums_dy;
    sum_dy_xmu = sums_dy_xmu;
    if (need_residual) grad_residual = masked;
  }
  // An empty batch has NaN statistics but sums of zero, and torch's zero weight gradient.
  if (need_weight && per_channel_count(input) == 0) {
    grad_weight = at::zeros(weight->sizes(), weight->options());
  } else if (need_weight) {
    grad_weight = sum_dy_xmu.mul(var.to(sum_dy_xmu.scalar_type()).add(eps).rsqrt_())
                      .view(weight->sizes())
                      .to(weight->scalar_type());
  }
  if (need_bias) grad_bias = sum_dy.view(bias->sizes()).to(bias->scalar_type());
  if (need_input && !training) {
    // As in training_bwd: with the masked gradient written, the dx pass reads it.
    grad_input = batch_norm_bwd_elemt(backend, need_residual ? grad_residual : grad_out, input,
                                      mean, var, weight, need_residual ? std::nullopt : relu_output,
                                      std::nullopt, std::nullopt, eps, 1);
  }
  for (at::Tensor* grad : {&grad_input, &grad_weight, &grad_bias, &grad_residual}) {
    if (!grad->defined()) *grad = unwanted();
  }
  return {grad_input, grad_weight, grad_bias, grad_residual};
}

}  // namespace fused_norm
