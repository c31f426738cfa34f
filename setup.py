"""Builds fused_norm._C: the CPU kernels always, the CUDA kernels when a CUDA toolkit and a CUDA
build of torch are present. FUSED_NORM_CUDA=1 forces CUDA on (an error if it cannot be built),
FUSED_NORM_CUDA=0 forces it off. Run `pip install --no-build-isolation -e .` after torch."""

import glob
import importlib.util
import os

import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _locate_cuda_home():
    """torch takes CUDA_HOME as the folder above `which nvcc`. Where nvcc is a wrapper or link
    outside the toolkit (here /usr/local/bin/nvcc runs /usr/local/cuda-13.0/bin/nvcc) that folder
    has no CUDA headers; then take the toolkit in its standard location, before torch looks."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            os.environ["CUDA_HOME"] = home
            return


_locate_cuda_home()
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)


def want_cuda():
    forced = os.environ.get("FUSED_NORM_CUDA")
    available = cpp_extension.CUDA_HOME is not None and _torch_cuda_version() is not None
    if forced == "1":
        if not available:
            raise RuntimeError(
                "FUSED_NORM_CUDA=1 but no CUDA toolkit (CUDA_HOME) or no CUDA build of torch found"
            )
        return True
    if forced == "0":
        return False
    return available


def _torch_cuda_version():
    import torch

    return torch.version.cuda


def nvidia_wheel_include_dirs():
    """Include folders of the nvidia-* wheels that a pip-installed CUDA torch depends on.

    torch's CUDA headers include cusparse.h, cublas_v2.h and friends, which the CUDA 13 wheels
    put in site-packages/nvidia/cu13/include (CUDA 12 wheels: nvidia/<lib>/include), not in the
    toolkit, so the build must add them itself."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for base in spec.submodule_search_locations:
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def sources(*patterns):
    """The files matching each pattern, in pattern order (link order)."""
    return [
        os.path.relpath(path, ROOT)
        for pattern in patterns
        for path in sorted(glob.glob(os.path.join(ROOT, pattern)))
    ]


# The CPU kernel files compiled for an instruction set beyond the baseline (AVX2, AVX-512).
ISA_SOURCES = "csrc/cpu/kernels_avx*.cpp"


class BuildExtensionIsaLast(cpp_extension.BuildExtension):
    """Links the per-ISA objects last. Where they and a baseline file both hold a copy of an inline
    function (std::vector's members, say), the linker keeps the first one, which must be the
    baseline copy that any CPU can run. setuptools sorts an extension's sources by path before
    compiling, so the order of the sources list alone does not decide the link order."""

    def build_extension(self, ext):
        isa_stems = {
            os.path.splitext(os.path.basename(path))[0] for path in sources(ISA_SOURCES)
        }
        link_shared_object = self.compiler.link_shared_object

        def link_isa_last(objects, *args, **kwargs):
            def is_isa(obj):
                return os.path.splitext(os.path.basename(obj))[0] in isa_stems

            ordered = [o for o in objects if not is_isa(o)] + [o for o in objects if is_isa(o)]
            return link_shared_object(ordered, *args, **kwargs)

        self.compiler.link_shared_object = link_isa_last
        try:
            super().build_extension(ext)
        finally:
            self.compiler.link_shared_object = link_shared_object


def extension():
    # No -std: torch adds the standard its headers need (C++17 up to 2.12, C++20 after).
    # -fopenmp: at::parallel_for is inline OpenMP (torch's build); without the flag it compiles
    # to a serial loop. The libgomp.so.1 it links is the one torch has already loaded.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    # The per-ISA CPU kernel files link last (BuildExtensionIsaLast).
    cpu_sources = sources(
        "csrc/*.cpp", "csrc/common/*.cpp", "csrc/cpu/cpu_backends.cpp",
        "csrc/cpu/kernels_default.cpp", ISA_SOURCES)
    if not want_cuda():
        return cpp_extension.CppExtension(
            "fused_norm._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    # Build for Ampere and Hopper unless the user names other architectures.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    # -isystem, not -I: searched after the toolkit's own include folder, which must win where
    # both hold a header (cuda_runtime_api.h and friends).
    for include_dir in nvidia_wheel_include_dirs():
        cxx_flags += ["-isystem", include_dir]
    return cpp_extension.CUDAExtension(
        "fused_norm._C",
        cpu_sources + sources("csrc/cuda/*.cpp", "csrc/cuda/*.cu"),
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtensionIsaLast},
)
