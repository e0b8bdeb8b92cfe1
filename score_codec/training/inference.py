"""Fast copies of a model: batch norm folded into the convolution before it, channels-last weights.

Relabelling runs the teacher over every augmented view (a million views for 10,000 images x 100 epochs),
so its speed bounds ``relabel`` and SCORE's feature pass.  In eval mode a ``BatchNorm2d`` is an affine map
per channel and folds into the preceding ``Conv2d``'s weights and bias; channels-last weights let oneDNN
(CPU) and cuDNN (GPU) pick their faster convolution kernels, in training too.  The fast copy computes the
same function up to float32 rounding (after the fp16 rounding of a dump, a rare value differs by one fp16
ulp).

User models can defeat both tricks (``x.view`` of a channels-last activation raises; hooks and
parametrizations are invisible to tracing), so :func:`fast_inference_model` and :func:`channels_last_if_safe`
probe the model on an example batch and keep it as it is, with a log line, when the fast form fails or
disagrees.
"""
from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..errors import InputError

__all__ = ["fold_batchnorm", "inference_copy", "fast_inference_model", "channels_last_if_safe"]

log = logging.getLogger(__name__)

#: relative agreement (max |fast - plain| / max |plain|) a probe needs; float32 rounding gives ~1e-7
PROBE_REL = 1e-4


def _plain(m: nn.Module) -> bool:
    """No hooks and no parametrizations: what torch.fx sees of the module is all it computes."""
    from torch.nn.utils import parametrize

    return not (m._forward_hooks or m._forward_pre_hooks or parametrize.is_parametrized(m))


def _conv_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """(conv name, batch-norm name) pairs where ``model.forward`` feeds a plain ``nn.Conv2d``'s output only
    into a plain eval-mode ``nn.BatchNorm2d`` with running statistics, each module called exactly once
    (found by tracing with torch.fx; [] if tracing fails)."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:   # any untraceable forward (data-dependent control flow, ...): no folding
        log.info("%s is not traceable by torch.fx (%s: %s); batch norm left unfolded",
                 type(model).__name__, type(exc).__name__, exc)
        return []
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        src = node.args[0] if bn is not None and node.args else None
        if type(bn) is not nn.BatchNorm2d or not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        conv = modules.get(src.target)
        if (type(conv) is nn.Conv2d and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1
                and not bn.training and not conv.training and bn.running_mean is not None
                and _plain(conv) and _plain(bn)):
            pairs.append((src.target, node.target))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` into that conv, in place.

    The conv gets the folded weights and bias and the batch norm becomes ``nn.Identity``, so the model
    keeps its class and its other methods (``features``).  Pairs are found by tracing ``forward`` with
    torch.fx; a model that cannot be traced is left as it is, and so are modules in training mode, batch
    norms without running statistics, subclasses, and modules with hooks or parametrizations.  Returns
    the number of folded pairs.

    Raises:
        InputError: the model is in training mode (batch statistics cannot be folded).
    """
    if model.training:
        raise InputError("fold_batchnorm needs a model in eval mode (call model.eval() first)")
    pairs = _conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _set(model, conv_name, nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
        _set(model, bn_name, nn.Identity())
    return len(pairs)


def _to_channels_last(model: nn.Module) -> bool:
    """Make ``model``'s 4-D parameters and buffers channels-last in place; False (and unchanged) when it has
    5-D ones, which ``Module.to(memory_format=channels_last)`` cannot convert."""
    if any(t.dim() == 5 for t in list(model.parameters()) + list(model.buffers())):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def inference_copy(model: nn.Module, device: Optional[Union[str, torch.device]] = None, fold: bool = True,
                   channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` for inference only: eval mode on ``device`` (None: where ``model`` is), batch
    norm folded into the convolutions before it (``fold``), weights channels-last (``channels_last``).

    Inputs stay ordinary ``(B, C, H, W)`` tensors; for the architectures in
    :mod:`score_codec.training.models` the outputs equal ``model``'s up to float32 rounding (other models:
    use :func:`fast_inference_model`, which checks).  The copy shares nothing with ``model``.
    """
    fast = copy.deepcopy(model).eval()
    if device is not None:
        fast = fast.to(device)
    if fold:
        n = fold_batchnorm(fast)
        log.debug("folded %d batch-norm layers of %s", n, type(model).__name__)
    if channels_last:
        _to_channels_last(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and float((a.float() - b.float()).abs().max()) <= \
        PROBE_REL * max(float(b.float().abs().max()), 1e-12)


@torch.no_grad()
def fast_inference_model(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """:func:`inference_copy` of ``model`` (eval mode, on ``model``'s device) if it gives ``model``'s
    outputs on ``example`` (a ``(B, C, H, W)`` batch on that device) to a relative ``PROBE_REL``; else
    ``model`` itself in eval mode, with a warning saying why."""
    model.eval()
    try:
        fast = inference_copy(model)
        ok = _agree(fast(example), model(example))
        why = "its outputs differ from the model's"
    except Exception as exc:   # deepcopy, tracing-invisible hooks, .view on channels-last, ...
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        log.warning("%s runs as given (no batch-norm folding or channels-last copy): %s", type(model).__name__, why)
        return model
    return fast


def channels_last_if_safe(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` with channels-last weights, in place, if that gives the same outputs on ``example`` (a
    ``(B, C, H, W)`` batch on the model's device, run in eval mode without gradients) to a relative
    ``PROBE_REL``; otherwise ``model`` unchanged, with an info line.  Returns ``model``.

    Training then runs the faster channels-last kernels (about 2x per step for small ConvNets on CPU);
    a model whose forward reshapes with ``view`` (which needs NCHW strides) keeps its layout."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(example)
            ok = _to_channels_last(model) and _agree(model(example), want)
            why = "5-D parameters or different outputs"
    except Exception as exc:   # e.g. .view() of a channels-last activation
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not ok:   # the layout never changes values: converting back undoes a partial conversion
        model.to(memory_format=torch.contiguous_format)
        log.info("%s keeps the NCHW layout (channels-last failed its probe: %s)", type(model).__name__, why)
    model.train(training)
    return model
