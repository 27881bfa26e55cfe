"""fastconv.optimize_for_inference: an eval-only graph transform of a model onto fastconv's kernels.

The model is traced with torch.fx; on the graph, each convolution whose output feeds only an
eval-mode BatchNorm2d absorbs it (weights folded exactly: computed in float64, rounded once), each
convolution whose output (after that folding) feeds only an activation (ReLU, ReLU6, Hardswish,
SiLU) or a residual add (then perhaps an activation) takes them into its output pass
(``Conv2dReLU``, ``Conv2dFused``), and the remaining Conv2d / MaxPool2d / ReLU modules switch to
fastconv's (``fastconv.convert``). Everything else (concatenations, other activations, pooling,
linear layers) is left as it is.
"""
import copy
import operator
import warnings

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import modules
from .convert import _has_hooks, _unsupported_reason, convert

__all__ = ["optimize_for_inference"]

# Exact classes (a subclass's forward may compute something else).
_CONVS = (nn.Conv2d, modules.Conv2d)
# The activations a convolution's output pass applies (fastconv.ops.ACTIVATIONS): modules,
# functions (whose only other argument may be ``inplace``) and Tensor methods that compute them.
_ACT_MODULES = {nn.ReLU: "relu", modules.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish",
                nn.SiLU: "silu"}
_ACT_FUNCTIONS = {F.relu: "relu", F.relu_: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
                  F.hardswish: "hardswish", F.silu: "silu"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu"}


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with fastconv's modules kept as leaves like torch.nn's."""

    def is_leaf_module(self, m, qualname):
        return type(m).__module__ == modules.__name__ or super().is_leaf_module(m, qualname)


def optimize_for_inference(model):
    """Return an inference-only copy of ``model`` (which must be in eval mode: ``model.eval()``)
    that runs on fastconv's kernels with its BatchNorms folded and its ReLUs fused; ``model``
    itself is not modified.

    ``model`` is traced with ``torch.fx.symbolic_trace`` (fastconv's and torch.nn's modules as
    leaves) and the graph is rewritten:

    - **BatchNorm folding**: a ``Conv2d`` whose output goes only to an eval-mode ``BatchNorm2d``
      (tracking running statistics) takes the BatchNorm into its weight and bias:
      ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``, computed in
      float64 from the stored values and rounded once to the conv's dtype.
    - **Activation fusion**: a ``Conv2d`` (folded or not) whose output goes only to a ReLU
      (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu``, in place or not) becomes a
      ``fastconv.Conv2dReLU``; one whose output goes only to a ReLU6, Hardswish or SiLU (the
      ``nn`` modules or ``F`` functions) a ``fastconv.Conv2dFused`` with that ``activation``.
    - **Residual fusion**: a ``Conv2d`` whose output goes only to an addition with another tensor
      (``+``, ``torch.add``, ``+=``), itself followed or not by one of those activations, becomes a
      ``fastconv.Conv2dFused`` called with the other operand as its residual.
    - The other ``Conv2d``, ``MaxPool2d`` and ``ReLU`` modules switch to fastconv's
      (``fastconv.convert(..., fuse_relu=False)``, which leaves layers fastconv cannot run with a
      warning).

    A convolution is folded or fused only where that cannot change what anything else sees: it
    must be an exact ``nn.Conv2d`` / ``fastconv.Conv2d`` called once in the graph, with no hooks and
    no direct use of its parameters; a BatchNorm or ReLU with hooks, or a subclass, is left alone.
    Concatenations, other activations and anything else are kept as they are.

    Returns a ``torch.fx.GraphModule`` (submodule names as in ``model``, so state_dict keys are the
    original ones minus the folded BatchNorms; where nothing was folded, the state_dict loads into
    the original architecture). Its weights are those of an eval-mode model: switching it back to
    train mode does not bring the BatchNorms back, so train and save the original.

    If ``model`` cannot be traced (Python control flow on tensor values, for instance), its own
    forward is kept as written, with a warning naming what could not be traced, and each child is
    optimized in its place (recursively): a child that traces keeps its class and attributes and
    gets the optimized graph as its forward. That assumes the untraced code calls its children as
    wholes, not the layers inside them; layers reachable by two paths are not folded there.

    Raises TypeError if ``model`` is not an ``nn.Module`` and ValueError if it, or any submodule,
    is in training mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.optimize_for_inference: expected a torch.nn.Module, got {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        more = f" and {len(training) - 3} more" if len(training) > 3 else ""
        raise ValueError(
            "fastconv.optimize_for_inference is for inference only and folds BatchNorm's running "
            "statistics into the convolutions, but the model is in training mode (modules "
            f"{', '.join(training[:3])}{more}); call model.eval() first")
    model = copy.deepcopy(model)
    untraced = []
    # Modules reachable by more than one path: an untraced forward may call them from anywhere.
    paths = {}
    for _, m in model.named_modules(remove_duplicate=False):
        paths[id(m)] = paths.get(id(m), 0) + 1
    shared = {k for k, n in paths.items() if n > 1}
    # Parameters held by more than one module (tied weights): a fold gives its conv a new one.
    uses = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    tied = {k for k, n in uses.items() if n > 1}
    model = _optimize(model, "", untraced, set(), shared, tied)
    if untraced:
        warnings.warn("fastconv.optimize_for_inference could not trace " + "; ".join(untraced)
                      + ": its own forward is kept as written and each of its children optimized in its place",
                      stacklevel=2)
    convert(model, fuse_relu=False)  # warns naming the layers fastconv cannot run
    return model


def _optimize(module, path, untraced, done, shared, tied):
    """The root traced: a GraphModule. Otherwise ``module`` itself, with its own forward replaced by
    its optimized graph's if it traces (class and attributes kept, for the untraced code that calls
    it), else with each child optimized in turn."""
    root = not path
    if id(module) in done:  # the same child reached by two paths: already done
        return module
    done.add(id(module))
    try:
        graph = _Tracer().trace(module)
    except Exception as e:  # anything symbolic tracing cannot follow
        untraced.append(f"{path or type(module).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        for name, child in module.named_children():
            if not _Tracer().is_leaf_module(child, name):
                _optimize(child, f"{path}.{name}" if path else name, untraced, done, shared, tied)
        return module
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    # Below an untraced forward, leave alone the modules reachable by other paths too.
    removed = _fold_and_fuse(gm, set() if root else shared, tied)
    if root:
        return gm
    for target in removed:  # the folded BatchNorms leave the module, as they leave a GraphModule
        owner, _, name = target.rpartition(".")
        delattr(module.get_submodule(owner), name)
    module.forward = gm.forward  # gm shares module's layers (the conv objects folded in place)
    return module


def _fold_and_fuse(gm, shared, tied):
    """Fold and fuse in place on ``gm``; returns the targets of the BatchNorms folded away."""
    calls, attr_owners = {}, set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            calls[id(m)] = calls.get(id(m), 0) + 1
        elif node.op == "get_attr":
            owner = node.target.rpartition(".")[0]
            attr_owners.add(id(gm.get_submodule(owner)))
    folded, changed = [], False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        conv = gm.get_submodule(node.target)
        if (type(conv) not in _CONVS or calls[id(conv)] != 1 or id(conv) in attr_owners or id(conv) in shared
                or _has_hooks(conv) or len(node.args) != 1 or node.kwargs):
            continue
        bn = _only_user(node)
        if bn is not None and _is_foldable_bn(gm, bn, node):
            _fold_bn(conv, gm.get_submodule(bn.target), tied)
            folded.append(bn.target)
            bn.replace_all_uses_with(node)
            gm.graph.erase_node(bn)
            changed = True
        if _unsupported_reason(conv) is not None:
            continue
        user = _only_user(node)
        act = _activation_of(gm, user, node)
        if act is not None:
            if act == "relu":  # in the kernel's own epilogue
                conv.__class__ = modules.Conv2dReLU
            else:
                conv.__class__, conv.activation = modules.Conv2dFused, act
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
            changed = True
        elif user is not None and _residual_of(user, node) is not None:
            _fuse_add(gm, conv, node, user)
            changed = True
    if not changed:
        return []
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    removed = []
    for target in folded:
        try:
            gm.get_submodule(target)
        except AttributeError:  # no longer used by the graph
            removed.append(target)
    return removed


# The additions a conv's output may absorb: out-of-place (either operand: IEEE addition commutes)
# or in place on the conv's output (``out += identity``).
_ADD_FUNCTIONS = (operator.add, torch.add)
_IADD = (operator.iadd,)
_ADD_METHODS = ("add", "add_")


def _residual_of(add, src):
    """The other operand when node ``add`` is ``src + other`` with a tensor-valued node ``other``
    (that the result is exactly the conv's output shape is checked at run time by Conv2dFused)."""
    if add.kwargs or len(add.args) != 2 or add.args[0] is add.args[1]:
        return None
    a, b = add.args
    if add.op == "call_function" and add.target in _ADD_FUNCTIONS:
        other = b if a is src else a if b is src else None
    elif (add.op == "call_function" and add.target in _IADD) or (add.op == "call_method" and add.target in _ADD_METHODS):
        other = b if a is src else None  # in place: only on the conv's own output
    else:
        return None
    return other if isinstance(other, fx.Node) else None


def _fuse_add(gm, conv, node, add):
    """conv (node) -> add (-> activation) becomes one Conv2dFused call, placed where the add was
    (its residual may be computed after the conv, as ResNet's downsample branch is)."""
    residual = _residual_of(add, node)
    last = _only_user(add)
    act = _activation_of(gm, last, add)
    conv.__class__, conv.activation = modules.Conv2dFused, act or "none"
    with gm.graph.inserting_before(add):
        fused = gm.graph.call_module(node.target, (node.args[0], residual))
    if act is None:
        last = add
    last.replace_all_uses_with(fused)
    if act is not None:
        gm.graph.erase_node(last)
    gm.graph.erase_node(add)
    gm.graph.erase_node(node)


def _only_user(node):
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_foldable_bn(gm, node, src):
    if node.op != "call_module" or node.args != (src,) or node.kwargs:
        return False
    bn = gm.get_submodule(node.target)
    return (type(bn) is nn.BatchNorm2d and not bn.training and bn.running_mean is not None
            and bn.running_var is not None and not _has_hooks(bn))


def _activation_of(gm, node, src):
    """The name of the activation node ``node`` computes on ``src`` alone (None if it is none)."""
    if node is None or not node.args or node.args[0] is not src:
        return None
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        ok = not _has_hooks(m) and len(node.args) == 1 and not node.kwargs
        return _ACT_MODULES.get(type(m)) if ok else None
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        # F.relu(x, inplace): whether in place does not matter, the conv's output has no other user.
        ok = set(node.kwargs) <= {"inplace"} and len(node.args) <= 2
        return _ACT_FUNCTIONS[node.target] if ok else None
    if node.op == "call_method" and len(node.args) == 1 and not node.kwargs:
        return _ACT_METHODS.get(node.target)
    return None


@torch.no_grad()
def _fold_bn(conv, bn, tied):
    """conv's weight and bias become those of bn(conv(x)): computed in float64, rounded once. They
    are written into the (copied model's) tensors themselves, so no second copy of a weight is
    allocated; a parameter in ``tied`` (held by another module too) is replaced by a new one."""
    w = conv.weight.detach().to(torch.float64, copy=True)
    k = w.shape[0]
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(k)
    gamma = bn.weight.detach().double() if bn.weight is not None else w.new_ones(k)
    beta = bn.bias.detach().double() if bn.bias is not None else w.new_zeros(k)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    new = {"weight": w.mul_(scale.reshape(-1, 1, 1, 1)), "bias": (b - bn.running_mean.double()) * scale + beta}
    for name, value in new.items():
        p = getattr(conv, name)
        if p is not None and id(p) not in tied:
            p.copy_(value)
        else:
            setattr(conv, name, nn.Parameter(value.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad))
