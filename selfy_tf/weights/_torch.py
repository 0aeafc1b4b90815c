"""Reading PyTorch files without unpickling code; torch is an optional dependency."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

TORCH_EXTRA_HINT = 'pip install -e ".[torch]"'


def import_torch() -> Any:
    """Imports torch, or raises an ImportError naming the pip extra to install."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading PyTorch checkpoints needs PyTorch, which is an optional "
            f"dependency of selfy-tf. Install it with: {TORCH_EXTRA_HINT} "
            "(torch==2.13.0, CPU)."
        ) from error
    return torch


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a state dict from a `.pth` / `.pth.tar` file as numpy arrays.

    Uses `torch.load(path, map_location="cpu", weights_only=True)`, which
    never unpickles code. Accepts a bare state dict or a training checkpoint
    holding one under `"state_dict"` (or `"model"`).

    Args:
        path: the checkpoint file.

    Returns:
        Key → float32/int numpy array, in file order.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the file holds no tensor dict.
        ImportError: if torch is not installed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint not found: {path!r}.")
    torch = import_torch()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for bad files
        raise ValueError(f"Cannot read PyTorch checkpoint {path!r}: {error}") from error
    state_dict = checkpoint
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                state_dict = checkpoint[key]
                break
    if not isinstance(state_dict, dict) or not state_dict or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise ValueError(
            f"{path!r} holds no PyTorch state dict (a dict of tensors, possibly under "
            f"'state_dict'). Received top-level keys: {list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__}."
        )
    return {key: value.detach().cpu().numpy() for key, value in state_dict.items()}
