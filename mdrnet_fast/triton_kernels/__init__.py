"""The `triton` backend (GPU; CPU tensors under TRITON_INTERPRET=1). Kernels land here one file per op
(issue 5); until then every op of this backend runs the composite version, logged once."""
