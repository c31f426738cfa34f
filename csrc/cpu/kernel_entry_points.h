// The entry points every CPU capability defines (kernels_default.cpp, kernels_avx2.cpp,
// kernels_avx512.cpp, through the kernel headers), and the capability's backends made of them.
// Deliberately without an include guard: it is included once inside each capability's namespace
// in cpu_backends.cpp, declaring the same functions in DEFAULT, AVX2 and AVX512 (CpuBackends,
// cpu_threads and no_group_norm_fwd_workspace come from the enclosing namespace).
void row_norm_fwd(const RowNormFwdParams& p);
void row_norm_bwd(const RowNormBwdParams& p);
size_t row_norm_bwd_workspace_bytes(const RowNormBwdParams& p);
void column_norm_stats(const ColumnStatsParams& p);
void column_norm_elemt(const ColumnNormElemtParams& p);
void column_norm_bwd_reduce(const ColumnNormBwdReduceParams& p);
void column_norm_bwd_elemt(const ColumnNormBwdElemtParams& p);
bool column_norm_bwd_training(const ColumnNormBwdReduceParams& r,
                              const ColumnNormBwdElemtParams& e);
size_t column_reduce_workspace_bytes(const ColumnShape& shape, DType x_dtype, int parallelism);
void group_norm_fwd(const GroupNormFwdParams& p);
void group_norm_bwd(const GroupNormBwdParams& p);
size_t group_norm_bwd_workspace_bytes(const GroupNormBwdParams& p);
void softmax_fwd(const SoftmaxFwdParams& p);
void softmax_bwd(const SoftmaxBwdParams& p);
void gated_fwd(const GatedFwdParams& p);
void gated_bwd(const GatedBwdParams& p);
void activation_fwd(const ActivationFwdParams& p);
void activation_bwd(const ActivationBwdParams& p);
void rrelu_fwd(const RreluFwdParams& p);
void rrelu_bwd(const RreluBwdParams& p);
void prelu_fwd(const PreluFwdParams& p);
void prelu_bwd(const PreluBwdParams& p);
size_t prelu_bwd_workspace_bytes(const PreluBwdParams& p);
void dyt_fwd(const DytFwdParams& p);
void dyt_bwd(const DytBwdParams& p);
size_t dyt_bwd_workspace_bytes(const DytBwdParams& p);
void transpose_batched(const TransposeParams& p);

// This capability's backends: the unqualified names are this namespace's entry points.
inline CpuBackends backends() {
  return {
      {row_norm_fwd, row_norm_bwd, row_norm_bwd_workspace_bytes, cpu_threads},
      {column_norm_stats, column_norm_elemt, column_norm_bwd_reduce, column_norm_bwd_elemt,
       column_reduce_workspace_bytes, cpu_threads, column_norm_bwd_training},
      {group_norm_fwd, group_norm_bwd, no_group_norm_fwd_workspace,
       group_norm_bwd_workspace_bytes, cpu_threads, /*channels_last=*/true},
      {softmax_fwd, softmax_bwd, cpu_threads},
      {gated_fwd, gated_bwd, cpu_threads},
      {activation_fwd, activation_bwd, rrelu_fwd, rrelu_bwd, prelu_fwd, prelu_bwd,
       prelu_bwd_workspace_bytes},
      {dyt_fwd, dyt_bwd, dyt_bwd_workspace_bytes, cpu_threads},
      {transpose_batched},
  };
}
