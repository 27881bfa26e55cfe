"""fastconv.convert: switch a model's Conv2d / MaxPool2d / ReLU layers to fastconv's kernels."""
import warnings

import torch
import torch.nn as nn

from . import modules

__all__ = ["convert"]

# Exact torch.nn classes (not their subclasses, whose forward may differ) -> fastconv class.
_REPLACEMENTS = {nn.Conv2d: modules.Conv2d, nn.MaxPool2d: modules.MaxPool2d, nn.ReLU: modules.ReLU}


def _supported_dtypes(device_type):
    from . import info

    if device_type == "cpu":
        return {torch.float32, torch.float64}
    if device_type == "cuda" and "cuda" in info()["backends"]:
        return {torch.float32, torch.float64, torch.float16, torch.bfloat16}
    return set()


def _unsupported_reason(module):
    """Why fastconv cannot run this module (None if it can)."""
    for p in module.parameters(recurse=False):
        if isinstance(p, nn.parameter.UninitializedParameter):
            return "its parameters are not initialised yet"
        if p.dtype not in _supported_dtypes(p.device.type):
            return f"fastconv has no {p.device.type} kernels for {p.dtype}"
    return None


def convert(model):
    """Replace every torch.nn.Conv2d, MaxPool2d and ReLU in ``model`` (the model itself included)
    by the fastconv module with the same configuration, parameters, buffers, hooks and training
    mode, and return the model. The switch is made in place by changing each module's class to its
    fastconv subclass, so parameters keep their identity (optimizers holding them stay valid).
    Modules fastconv cannot run (e.g. float16 on the CPU) are left as they were, with a warning
    naming them; outputs match the original within floating-point tolerance.
    """
    skipped = []
    for name, module in model.named_modules():
        new_cls = _REPLACEMENTS.get(type(module))
        if new_cls is None:
            continue
        reason = _unsupported_reason(module)
        if reason:
            skipped.append(f"{name or type(module).__name__} ({reason})")
            continue
        module.__class__ = new_cls
    if skipped:
        warnings.warn("fastconv.convert left these modules unchanged: " + "; ".join(skipped), stacklevel=2)
    return model
