"""Builds mdrnet_fast._C (csrc/cpu, always) and mdrnet_fast._C_cuda (csrc/cuda, when possible).

MDRNET_FAST_BUILD_CUDA=1 forces the CUDA extension (fails loudly if it cannot be built),
MDRNET_FAST_BUILD_CUDA=0 skips it; unset, it is built when torch has CUDA and nvcc is found.
MDRNET_FAST_BUILD_CPU=0 skips the CPU extension mdrnet_fast._C (default 1): CI's CUDA step (.ci/build_cuda)
builds only _C_cuda with it, since the CPU step has already built and tested _C.

Building _C_cuda (see csrc/cuda/README.md and .ci/build_cuda): a torch with CUDA, CUDA_HOME pointing at the
toolkit (torch otherwise guesses it from the nvcc found on PATH, and a wrapper there makes the link fail on
-lcudart), CPATH with the headers of torch's nvidia wheels (cusparse.h, cublas), TORCH_CUDA_ARCH_LIST for the
GPU architectures (e.g. "8.0;9.0") and MAX_JOBS for ninja's parallel compiles. Build into a scratch place
(`python setup.py build_ext --build-lib DIR --build-temp DIR`) to keep an in-place CPU build untouched.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - we build against the installed torch only
    sys.exit(
        "mdrnet_fast builds its C++ extension against the installed torch: install torch first, "
        "then `pip install --no-build-isolation -e .`"
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    out = []
    for pattern in patterns:
        out += sorted(glob.glob(os.path.join("csrc", pattern)))
    return out


def _want_cuda():
    flag = os.environ.get("MDRNET_FAST_BUILD_CUDA")
    found = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "0":
        return False
    if flag == "1":
        if not found:
            sys.exit(
                "MDRNET_FAST_BUILD_CUDA=1 but torch has no CUDA (torch.version.cuda=%r) or nvcc/CUDA_HOME "
                "was not found (CUDA_HOME=%r)" % (torch.version.cuda, cpp_extension.CUDA_HOME)
            )
        return True
    return found


# -g0: no debug info (python adds -g); it roughly halves the build time of the pybind unit.
# -fno-trapping-math: no code here reads the floating-point exception flags; it lets the vectoriser
# if-convert the branch-free selects of the element-wise kernels (values are unchanged, unlike -ffast-math).
# -ffp-contract=off: a * b + c is rounded twice wherever it is compiled, so the kernels compiled for
# several instruction sets (FMA or not) give the same bits, and an expression computed in two passes
# (e.g. SPADE's dxhat, summed, then subtracted) cancels exactly.
cxx_flags = ["-O3", "-fopenmp", "-g0", "-fno-trapping-math", "-ffp-contract=off"]
if os.environ.get("MDRNET_FAST_NATIVE", "0") == "1":
    cxx_flags.append("-march=native")

ext_modules = []
if os.environ.get("MDRNET_FAST_BUILD_CPU", "1") != "0":
    ext_modules.append(
        cpp_extension.CppExtension(
            "mdrnet_fast._C",
            _sources("register.cpp", "cpu/*.cpp"),
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    )

if _want_cuda():
    cuda_sources = _sources("cuda/*.cu", "cuda/*.cpp")
    if cuda_sources:
        ext_modules.append(
            cpp_extension.CUDAExtension(
                "mdrnet_fast._C_cuda",
                cuda_sources,
                include_dirs=[os.path.join(HERE, "csrc")],
                # -lineinfo: source lines in compute-sanitizer / ncu reports, at no run-time cost
                extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3", "-lineinfo"]},
            )
        )


def links_shared_libstdcxx(path):
    """True if the built module loads the shared libstdc++ (None when readelf is missing)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        return None
    dynamic = subprocess.run([readelf, "-d", path], capture_output=True, text=True).stdout
    return "[libstdc++.so" in dynamic


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's build with ninja, plus one check of each built module: it must load the shared libstdc++.

    A compiler that links libstdc++ statically (the GPU image lent here sets CC/CXX to such a gcc in
    /opt/gcc) gives the module its own copy of the C++ runtime next to torch's shared one; the first
    number formatted into an error message then crashes the process (a segfault in ostream's double output,
    seen on an H100). The build fails instead, naming the fix."""

    def build_extension(self, ext):
        super().build_extension(ext)
        path = self.get_ext_fullpath(ext.name)
        if links_shared_libstdcxx(path) is False:
            os.remove(path)
            sys.exit(
                f"mdrnet_fast: {os.path.basename(path)} was linked with a static libstdc++ (CXX="
                f"{os.environ.get('CXX', 'c++')!r}, LDFLAGS={os.environ.get('LDFLAGS', '')!r}); it would crash next "
                "to torch's shared libstdc++. Build with a compiler that links it dynamically, e.g. the system one: "
                "CC=gcc CXX=g++ pip install ..."
            )


setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension},
)
