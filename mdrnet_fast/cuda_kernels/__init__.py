"""The `cuda` backend: CUDA C++ kernels from csrc/cuda (extension mdrnet_fast._C_cuda), registered on
import, one file per op (issue 6). None yet: every op of this backend runs the composite version."""
