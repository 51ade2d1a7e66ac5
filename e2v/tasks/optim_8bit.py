"""bitsandbytes' 8-bit AdamW (block-wise quantised moments: about 2 bytes of state per parameter instead of 8),
refusing at construction, with a clear message, parameters on a device its installed build has no kernel for.

Recipe: ``optimizer: {class_path: e2v.tasks.optim_8bit.AdamW8bit, init_args: {lr: 1.0e-4}}``. Without the check a
build lacking the device's kernel fails inside the first ``optimizer.step`` with an internal error.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

try:
    import bitsandbytes
except ImportError as err:  # pragma: no cover - bitsandbytes is an install requirement
    raise ImportError("e2v.tasks.optim_8bit.AdamW8bit needs bitsandbytes: pip install bitsandbytes") from err

KERNEL = "bitsandbytes::optimizer_update_8bit_blockwise"


def has_8bit_kernel(device_type: str) -> bool:
    """Whether the installed bitsandbytes registers its 8-bit optimizer update for ``device_type`` tensors."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(KERNEL, device_type.upper())
    except RuntimeError:  # the operator itself is not registered (an old bitsandbytes)
        return False


class AdamW8bit(bitsandbytes.optim.AdamW8bit):
    """``bitsandbytes.optim.AdamW8bit`` (same arguments) with a device check of its parameters."""

    def __init__(self, params: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        params = list(params)
        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        for device_type in sorted({p.device.type for p in tensors}):
            if not has_8bit_kernel(device_type):
                hint = " (bitsandbytes >= 0.49 runs it on CPU tensors)" if device_type == "cpu" else ""
                raise RuntimeError(
                    f"bitsandbytes {bitsandbytes.__version__} has no 8-bit AdamW kernel for {device_type} tensors"
                    f"{hint}; use optimizer class_path torch.optim.AdamW, or train on a device it supports"
                )
        super().__init__(params, *args, **kwargs)
