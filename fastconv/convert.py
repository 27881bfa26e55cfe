"""fastconv.convert: switch a model's Conv2d / MaxPool2d / ReLU layers to fastconv's kernels."""
import warnings

import torch
import torch.nn as nn

from . import modules

__all__ = ["convert", "fuse_conv_relu"]

# Exact torch.nn classes (not their subclasses, whose forward may differ) -> fastconv class.
_REPLACEMENTS = {nn.Conv2d: modules.Conv2d, nn.MaxPool2d: modules.MaxPool2d, nn.ReLU: modules.ReLU}


def _supported_dtypes(device_type):
    from . import info

    built = info()
    if device_type not in built["backends"]:
        return set()
    return {getattr(torch, name) for name in built["dtypes"][device_type]}


def _unsupported_reason(module):
    """Why fastconv cannot run this module (None if it can)."""
    for p in module.parameters(recurse=False):
        if isinstance(p, nn.parameter.UninitializedParameter):
            return "its parameters are not initialised yet"
        if p.dtype not in _supported_dtypes(p.device.type):
            return f"fastconv has no {p.device.type} kernels for {p.dtype}"
    return None


def convert(model, fuse_relu=True):
    """Replace every torch.nn.Conv2d, MaxPool2d and ReLU in ``model`` (the model itself included)
    by the fastconv module with the same configuration, parameters, buffers, hooks and training
    mode, and return the model. The switch is made in place by changing each module's class to its
    fastconv subclass, so parameters keep their identity (optimizers holding them stay valid).
    Modules fastconv cannot run (e.g. float16 on the CPU) are left as they were, with a warning
    naming them; outputs match the original within floating-point tolerance.
    With ``fuse_relu`` (default), ``fuse_conv_relu(model)`` then fuses Conv2d + ReLU pairs.
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
    if fuse_relu:
        fuse_conv_relu(model)
    return model


def _has_hooks(module):
    return any(getattr(module, name, None) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def fuse_conv_relu(model):
    """Fuse each fastconv ``Conv2d`` that is directly followed by a fastconv ``ReLU`` inside an
    ``nn.Sequential`` into one ``Conv2dReLU`` (the conv's class changes in place, so its parameters
    keep their identity; the ReLU's slot becomes ``nn.Identity``, so indices and state_dict keys
    stay). Returns the number of pairs fused.

    Fusing is safe there because a Sequential feeds each module's output only to the next one; it is
    skipped where it might not be: containers that subclass Sequential (their forward may differ),
    modules used more than once in the model, and modules with hooks (they would see the fused
    values). Call it only on models that run their Sequentials as Sequentials (not by indexing).
    """
    uses = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    fused = 0
    for seq in list(model.modules()):
        if type(seq) is not nn.Sequential:
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, relu = seq._modules[a], seq._modules[b]
            if (type(conv) is modules.Conv2d and type(relu) is modules.ReLU
                    and uses[id(conv)] == 1 and uses[id(relu)] == 1
                    and not _has_hooks(conv) and not _has_hooks(relu)):
                conv.__class__ = modules.Conv2dReLU
                seq._modules[b] = nn.Identity()
                fused += 1
    return fused
