// Every schema of the fused_norm library, in one place. Implementations register per device
// (cpu/*_cpu.cpp, cuda/*_launch.cpp); fake kernels, autograd and autocast live in fused_norm/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(fused_norm, m) {
  // Row norms. mean/rstd: [M] in float32 (float64 for float64 input), M = rows before
  // normalized_shape. An output whose output_mask entry is false (or whose parameter is None)
  // comes back as an empty [0] tensor.
  m.def(
      "layer_norm_fwd(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, "
      "float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm_bwd(Tensor grad_out, Tensor input, SymInt[] normalized_shape, Tensor mean, "
      "Tensor rstd, Tensor? weight, Tensor? bias, bool[3] output_mask) -> (Tensor, Tensor, "
      "Tensor)");
  m.def(
      "rms_norm_fwd(Tensor input, SymInt[] normalized_shape, Tensor? weight, float eps) -> "
      "(Tensor, Tensor)");
  m.def(
      "rms_norm_bwd(Tensor grad_out, Tensor input, SymInt[] normalized_shape, Tensor rstd, "
      "Tensor? weight, bool[2] output_mask) -> (Tensor, Tensor)");
  // Fused add + norm (LayerNorm, or RMSNorm with rms): y = norm(h), h = dropout(input) + alpha *
  // residual, with the residual stream h in residual_dtype (default: the residual's dtype, else
  // the input's) and y in out_dtype (default: the input's). dropout_seed: one int64 on the
  // input's device (drawn from torch's generator by the caller), needed when dropout_p > 0.
  // write_sum false: h is not written (sum comes back empty). mean is empty for RMSNorm.
  // memory_efficient is for autograd alone: it saves y instead of h, and the backward recomputes
  // xhat = (y - bias) / weight (the weight must have no zeros). The backward takes the saved h,
  // or y when saved_is_output, and returns the gradients of input, residual (in residual_dtype),
  // weight and bias.
  m.def(
      "add_norm_fwd(Tensor input, Tensor? residual, SymInt[] normalized_shape, Tensor? weight, "
      "Tensor? bias, float eps, bool rms, float alpha, float dropout_p, Tensor? dropout_seed, "
      "ScalarType? residual_dtype, ScalarType? out_dtype, bool zero_centered_weight, "
      "bool write_sum, bool memory_efficient) -> (Tensor y, Tensor sum, Tensor mean, Tensor rstd)");
  m.def(
      "add_norm_bwd(Tensor grad_out, Tensor? grad_sum, Tensor saved, SymInt[] normalized_shape, "
      "Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, bool rms, float alpha, "
      "float dropout_p, Tensor? dropout_seed, bool zero_centered_weight, bool saved_is_output, "
      "ScalarType input_dtype, ScalarType residual_dtype, bool[4] output_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor)");

  // Column norms (BatchNorm and its fused forms). The input is (N, C, *); statistics are per
  // channel C, in float32 (float64 for float64 input): mean and biased var, or the running
  // statistics in eval. relu_output is the output of a BatchNorm fused with ReLU (its backward
  // masks grad_out with relu_output > 0).
  //
  // BatchNorm: y = act(bn(input) + residual), act ReLU when relu, else none. In training the
  // forward computes the batch statistics, returns them as mean and var, and updates the running
  // statistics given (torch's rule: unbiased variance, lerp by momentum; an empty batch updates
  // nothing); in eval it normalizes with the running statistics and returns empty [0] mean and
  // var. The backward takes the mean and var the forward used (the batch's, or the running ones)
  // and gives (grad_input, grad_weight, grad_bias, grad_residual), an empty [0] tensor where
  // output_mask says so or there is nothing to differentiate; grad_residual needs relu_output
  // (without ReLU it is grad_out itself).
  m.def(
      "batch_norm_fwd(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, bool training, float momentum, "
      "float eps, bool relu) -> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_bwd(Tensor grad_out, Tensor input, Tensor mean, Tensor var, Tensor? weight, "
      "Tensor? bias, Tensor? relu_output, float eps, bool training, bool[4] output_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  // The same in pieces, so that SyncBatchNorm can combine statistics and backward sums across
  // processes between them; count is the number of elements per channel the statistics cover.
  m.def("batch_norm_stats(Tensor input) -> (Tensor mean, Tensor var)");
  m.def(
      "batch_norm_elemt(Tensor input, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, "
      "Tensor? residual, float eps, bool relu) -> Tensor");
  m.def(
      "batch_norm_bwd_reduce(Tensor grad_out, Tensor input, Tensor mean, Tensor? relu_output, "
      "bool want_grad_residual) -> (Tensor sum_dy, Tensor sum_dy_xmu, Tensor grad_residual)");
  m.def(
      "batch_norm_bwd_elemt(Tensor grad_out, Tensor input, Tensor mean, Tensor var, "
      "Tensor? weight, Tensor? relu_output, Tensor? sum_dy, Tensor? sum_dy_xmu, float eps, "
      "SymInt count) -> Tensor");

  // Group norms (GroupNorm; InstanceNorm is GroupNorm with num_groups == C) on (N, C, *) input,
  // with a fused activation: "none", "relu", "silu", "gelu", "gelu_tanh" or "mish". mean/rstd:
  // [N, num_groups] in float32 (float64 for float64 input). The backward recomputes the
  // activation's input from x: nothing but the statistics is saved.
  m.def(
      "group_norm_fwd(Tensor input, int num_groups, Tensor? weight, Tensor? bias, float eps, "
      "str activation) -> (Tensor, Tensor, Tensor)");
  m.def(
      "group_norm_bwd(Tensor grad_out, Tensor input, int num_groups, Tensor mean, Tensor rstd, "
      "Tensor? weight, Tensor? bias, str activation, bool[3] output_mask) -> (Tensor, Tensor, "
      "Tensor)");

  // Softmax and LogSoftmax (log = true) over `dim` (wrapped like torch's; a 0-dim tensor takes
  // -1 or 0). The output is contiguous, in the input's dtype: torch's dtype= argument is a cast
  // before the op. The backward needs the forward's output only.
  m.def("softmax_fwd(Tensor input, int dim, bool log) -> Tensor");
  m.def("softmax_bwd(Tensor grad_out, Tensor output, int dim, bool log) -> Tensor");

  // Gated units: act(a) * b with act "silu" (SwiGLU), "gelu" or "gelu_tanh" (GeGLU). The chunk
  // ops take a, b = input.chunk(2, -1) (the gate on the first half) and give the gradient of the
  // whole input; the others take a and b of one shape. Outputs are contiguous. The backward
  // recomputes act(a): nothing but the inputs is saved.
  m.def("gated_chunk_fwd(Tensor input, str activation) -> Tensor");
  m.def("gated_chunk_bwd(Tensor grad_out, Tensor input, str activation) -> Tensor");
  m.def("gated_fwd(Tensor a, Tensor b, str activation) -> Tensor");
  m.def("gated_bwd(Tensor grad_out, Tensor a, Tensor b, str activation) -> (Tensor, Tensor)");

  // Standalone activations. `kind` is one of relu, leaky_relu [negative_slope],
  // elu [alpha, scale, input_scale], gelu, gelu_tanh, silu, hardswish, hardsigmoid,
  // hardtanh [min_val, max_val], mish, sigmoid, tanh, softplus [beta, threshold], with `args` as
  // bracketed. activation_bwd's `saved` is the forward's output for sigmoid and tanh, its input
  // for every other kind. Outputs take the input's strides when it is dense (channels_last too).
  m.def("activation_fwd(Tensor input, str kind, float[] args) -> Tensor");
  m.def("activation_bwd(Tensor grad_out, Tensor saved, str kind, float[] args) -> Tensor");
  // RReLU in training: the slopes, drawn by the caller with torch's generator, in `noise` (same
  // shape as the input). The forward returns (y, slope) with slope = input <= 0 ? noise : 1 and
  // y = input * slope, as torch's rrelu_with_noise leaves its noise; the backward is
  // grad_out * slope, reading two tensors instead of three.
  m.def("rrelu_with_noise_fwd(Tensor input, Tensor noise) -> (Tensor, Tensor)");
  m.def("rrelu_with_noise_bwd(Tensor grad_out, Tensor slope) -> Tensor");
  // PReLU: weight of one element, or one per channel (input dim 1). An output whose output_mask
  // entry is false comes back as an empty [0] tensor.
  m.def("prelu_fwd(Tensor input, Tensor weight) -> Tensor");
  m.def(
      "prelu_bwd(Tensor grad_out, Tensor input, Tensor weight, bool[2] output_mask) -> (Tensor, "
      "Tensor)");

  // DyT (Dynamic Tanh): y = weight * tanh(alpha * x) + bias, alpha a one-element tensor (read
  // from memory by the kernels), weight and bias (optional, one shape) over the input's trailing
  // dims like LayerNorm's normalized_shape; alpha, weight and bias of one dtype: the input's, or
  // float32 with a 16-bit input. The output is contiguous, in the input's dtype. The backward
  // returns (dx, dalpha, dweight, dbias), each output whose output_mask entry is false (or whose
  // parameter is None) an empty [0] tensor.
  m.def("dyt_fwd(Tensor input, Tensor alpha, Tensor? weight, Tensor? bias) -> Tensor");
  m.def(
      "dyt_bwd(Tensor grad_out, Tensor input, Tensor alpha, Tensor? weight, Tensor? bias, "
      "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");

  // input.clone(memory_format=torch.contiguous_format), by a blocked transpose on CPU where the
  // input's layout is a batched transpose (channels_last among them; csrc/common/layout.h).
  m.def("contiguous_copy(Tensor input) -> Tensor");
}
