"""Imports a built mdrnet_fast._C_cuda from its file (without importing the mdrnet_fast package, whose
dependencies the CUDA build venv lacks) and checks that it has every function the `cuda` backend's Python
wrappers call (`_C_cuda.NAME(` in mdrnet_fast/cuda_kernels/*.py) and every function register_cuda.cpp binds,
and that it was built for the requested architectures. Needs no GPU. Usage: python .ci/check_cuda_module.py PATH/_C_cuda...so"""
import glob
import importlib.util
import os
import re
import subprocess
import sys

import torch  # loads libtorch / libc10_cuda / libcudart that the module links against

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expected_functions():
    """Every function the wrappers call (`_C_cuda.NAME(`) and every one register_cuda.cpp binds (`m.def("NAME"`;
    shared wrappers such as composite.partial_conv.around_library_conv take the module as an argument)."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "mdrnet_fast", "cuda_kernels", "*.py")):
        with open(path) as f:
            names |= set(re.findall(r"\b_C_cuda\.([A-Za-z_]\w*)\(", f.read()))
    with open(os.path.join(ROOT, "csrc", "cuda", "register_cuda.cpp")) as f:
        names |= set(re.findall(r'm\.def\("([A-Za-z_]\w*)"', f.read()))
    return sorted(names)


def find_cuobjdump():
    """The toolkit's cuobjdump, else the one triton ships (a dependency of the CUDA torch), else None."""
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def main(path):
    spec = importlib.util.spec_from_file_location("mdrnet_fast._C_cuda", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    want = expected_functions()
    have = sorted(n for n in dir(mod) if not n.startswith("_"))
    missing = [n for n in want if not hasattr(mod, n)]
    print(f"check_cuda_module: {os.path.basename(path)} imported (torch {torch.__version__}, "
          f"cuda available: {torch.cuda.is_available()}); functions: {', '.join(have)}")
    if not want:
        sys.exit("check_cuda_module: found no _C_cuda.NAME( call in mdrnet_fast/cuda_kernels/*.py")
    if missing:
        sys.exit(f"check_cuda_module: functions called by mdrnet_fast/cuda_kernels or bound in register_cuda.cpp "
                 f"but missing: {missing}")
    # the device code for every requested architecture is in the binary
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    wanted_sm = sorted({"sm_" + a.strip().replace(".", "").replace("+PTX", "") for a in re.split(r"[;, ]", archs) if a.strip()})
    cuobjdump = find_cuobjdump()
    if wanted_sm and cuobjdump:
        listing = subprocess.run([cuobjdump, "--list-elf", path], capture_output=True, text=True).stdout
        found = sorted(set(re.findall(r"\.(sm_\d+a?)\.", listing)))
        absent = [s for s in wanted_sm if s not in found]
        print(f"check_cuda_module: device code for {', '.join(found) or 'nothing'}")
        if absent:
            sys.exit(f"check_cuda_module: no device code for {absent} (TORCH_CUDA_ARCH_LIST={archs!r})")
    elif wanted_sm:
        print(f"check_cuda_module: no cuobjdump found: the architectures were not checked "
              f"(nvcc was asked for {', '.join(wanted_sm)})")
    print(f"check_cuda_module: ok, all {len(want)} functions the wrappers call are present")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
