"""Network weights for the metrics, from files the user gives: nothing is downloaded, and a metric whose
weights are missing is switched off (never computed from random weights)."""
from __future__ import annotations

import os
from typing import Dict, Mapping

import torch


def load_state_dict(path, what: str) -> Dict[str, torch.Tensor]:
    """The tensors of a state_dict file (a plain dict of tensors, or one under "state_dict"/"model"), or a
    ValueError naming the file and what was expected."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what}: {path} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip or torch errors: all mean "not a weights file"
        raise ValueError(f"{what}: {path} is not a PyTorch weights file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{what}: {path} holds no state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path, what: str,
              ignore=()) -> torch.nn.Module:
    """module.load_state_dict(state) with keys starting with `ignore` dropped; missing, unexpected or misshapen
    keys are one ValueError that names the file and a few of the keys."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore))}
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
                 if keys]
        raise ValueError(f"{what}: {path} does not fit ({'; '.join(parts)})")
    module.load_state_dict(state, strict=False)
    return module.eval().requires_grad_(False)
