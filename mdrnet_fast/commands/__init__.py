"""The model commands of `mdrnet-fast`: train, inpaint, eval (one module each)."""
