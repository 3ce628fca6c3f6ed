"""A simulated CUDA device on the CPU, to find device bugs on machines without a GPU.

Tensors of the subclass `OnDevice` hold CPU memory but report `cuda:0`; inside `FakeCuda`
(a torch function mode) factories given that device make them, `.to("cuda")` and a
module's `.to("cuda")` give them, and operations on them keep them. What CUDA refuses is
a `DeviceMix` error: an operation mixing them with CPU tensors (other than 0-d ones, which
CUDA takes as scalars; a CUDA tensor may be indexed by CPU indices), `.numpy()` or
`np.asarray` of them, and a CPU generator drawing for them. The meta device finds the
first kind too, but stops at the first value a method reads (`.item()`, `bool`), which
most of aetk's methods do; here the values are real.

Inside `torch.func` transforms of tagged tensors the points are functorch's wrapped
tensors, which this cannot tag: there it checks only that CPU tensors do not meet them.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("cuda", 0)  # what the simulated tensors report
CPU = torch.device("cpu")
moved: list[torch.device] = []  # the devices modules were moved to, since `install`
_INDEXING = ("__getitem__", "__setitem__", "copy_")


class DeviceMix(RuntimeError):
    """What CUDA would refuse."""


class OnDevice(torch.Tensor):
    """A CPU tensor that says it is on `cuda:0`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        owner = getattr(func, "__self__", None)
        if owner is torch._C.TensorBase.device:
            return _fake()
        if owner is torch._C.TensorBase.is_cuda:
            return True
        if owner is torch._C.TensorBase.is_cpu:
            return False
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def __deepcopy__(self, memo: dict) -> torch.Tensor:
        with torch._C.DisableTorchFunctionSubclass():
            copy = self.detach().clone().as_subclass(OnDevice)
        copy = nn.Parameter(copy, self.requires_grad) if _is_param(self) else copy
        memo[id(self)] = copy
        return copy


def _fake() -> torch.device:
    return FAKE  # looked up at each call: a test may patch it


def _is_param(t: torch.Tensor) -> bool:
    return isinstance(t, nn.Parameter) or getattr(t, "_is_param", False)


def _wrapped(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t)


def on(t: Any) -> Any:
    """`t` tagged as on the device (functorch's wrapped tensors and parameters as they are)."""
    if not isinstance(t, torch.Tensor) or type(t) is OnDevice or _wrapped(t) or _is_param(t):
        return t
    with torch._C.DisableTorchFunctionSubclass():
        return t.as_subclass(OnDevice)


def off(t: Any) -> Any:
    """`t` as a plain (CPU) tensor."""
    if not isinstance(t, OnDevice):
        return t
    with torch._C.DisableTorchFunctionSubclass():
        return t.as_subclass(torch.Tensor)


def _is_fake(device: Any) -> bool:
    return isinstance(device, int) or torch.device(device).type == "cuda"


def _is_device_arg(a: Any) -> bool:
    return isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool))


def to_device(module: nn.Module) -> nn.Module:
    """`module` with its parameters and buffers on the simulated device, in place."""
    for m in module.modules():
        for k, p in list(m._parameters.items()):
            if p is not None and type(p) is not OnDevice:
                with torch._C.DisableTorchFunctionSubclass():
                    data = p.detach().as_subclass(OnDevice)
                m._parameters[k] = nn.Parameter(data, p.requires_grad)
        for k, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[k] = on(b)
    return module


def to_cpu(module: nn.Module) -> nn.Module:
    """`module` back on the CPU, in place."""
    for m in module.modules():
        for k, p in list(m._parameters.items()):
            if isinstance(p, OnDevice):
                m._parameters[k] = nn.Parameter(off(p.detach()), p.requires_grad)
        for k, b in list(m._buffers.items()):
            m._buffers[k] = off(b)
    return module


class FakeCuda(TorchFunctionMode):
    """The mode that moves, tags and checks (see the module's docstring)."""

    def fail(self, what: str) -> None:
        where = [f"{f.filename.rsplit('/src/', 1)[-1]}:{f.lineno}"
                 for f in traceback.extract_stack() if "/aetk/" in f.filename]
        raise DeviceMix(f"{what} at {where[-3:]}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        first = args[0] if args else None
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and isinstance(first, OnDevice):
            self.fail(f"{name} (numpy) of a CUDA tensor")
        owner = getattr(func, "__self__", None)
        if owner in (torch._C.TensorBase.grad, torch._C.TensorBase.data):  # a parameter's
            out = func(*args)
            return on(out) if isinstance(first, OnDevice) and out is not None else out
        if func is torch.Tensor.cpu:
            return off(first)
        if func is torch.Tensor.cuda:
            return on(first)
        if func is torch.Tensor.to:
            return self._to(func, args, kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        tagged = any(isinstance(t, OnDevice) for t in tensors)
        target = None
        if kwargs.get("device") is not None:
            target, kwargs["device"] = _is_fake(kwargs["device"]), CPU
        generator = kwargs.get("generator")
        if (generator is not None and generator.device.type == "cpu" and name != "randperm"
                and (target or (target is None and tagged))):
            self.fail(f"{name} draws for a CUDA tensor with a CPU generator")
        if name in _INDEXING:
            if not isinstance(first, OnDevice) and not _wrapped(first) and any(
                    isinstance(t, OnDevice) and t.dim() for t in tensors[1:]):
                self.fail(f"{name} of a CPU tensor with CUDA indices or values")
        elif target is None and (tagged or (_transforms_on_device[0]
                                             and any(_wrapped(t) for t in tensors))):
            cpu = [tuple(t.shape) for t in tensors
                   if not isinstance(t, OnDevice) and t.dim() and not _wrapped(t)]
            if cpu:
                self.fail(f"{name} mixes CUDA tensors and CPU tensors of shapes {cpu}")
        out = func(*args, **kwargs)
        if target is False:
            return tree_map(off, out)
        if target or tagged:
            return out if name.endswith("_") and out is first else tree_map(on, out)
        return out

    def _to(self, func, args, kwargs):
        first = args[0]
        device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
        if len(args) > 1 and isinstance(args[1], torch.Tensor):
            target = isinstance(args[1], OnDevice)
        elif device is not None:
            target = _is_fake(device)
            args = (first, *(CPU if _is_device_arg(a) else a for a in args[1:]))
            if "device" in kwargs:
                kwargs["device"] = CPU
        else:
            target = isinstance(first, OnDevice)
        out = func(*args, **kwargs)
        return on(out) if target else off(out)


def _module_to(module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    if dtype is not None:
        _MODULE_TO(module, dtype)
    if device is None:
        return module
    moved.append(device)
    return to_device(module) if _is_fake(device) else to_cpu(module)


_MODULE_TO = nn.Module.to


_transforms_on_device = [0]  # how many torch.func transforms of tagged inputs are running


def _tagging(fn, inputs):
    """`fn`, a torch.func transform, whose outputs are tagged where `inputs(args, kwargs)`
    hold a tagged tensor (and which checks the wrapped tensors inside meanwhile)."""
    def tagged(*args, **kwargs):
        leaves = tree_flatten(inputs(args, kwargs))[0]
        if not any(isinstance(t, OnDevice) for t in leaves):
            return fn(*args, **kwargs)
        _transforms_on_device[0] += 1
        try:
            return tree_map(on, fn(*args, **kwargs))
        finally:
            _transforms_on_device[0] -= 1
    return tagged


def install(monkeypatch) -> FakeCuda:
    """Patch torch for the simulation (CUDA available, modules and saving), and the
    `torch.func` transforms of aetk's geometry so that their results keep the tag; return
    the mode to enter."""
    import torch.func as tf

    import aetk.geometry.connection
    import aetk.geometry.curvature
    import aetk.geometry.curves
    import aetk.geometry.metrics

    moved.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: None)
    monkeypatch.setattr(nn.Module, "to", _module_to)
    monkeypatch.setattr(nn.Module, "cuda", lambda self, *a: _module_to(self, "cuda"))
    monkeypatch.setattr(nn.Module, "cpu", lambda self: _module_to(self, "cpu"))
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, *a, **k: save(tree_map(off, obj), *a, **k))

    def vjp(f, *primals, **kw):
        out, pull = _tagging(tf.vjp, lambda a, k: a[1:])(f, *primals, **kw)
        return out, _tagging(pull, lambda a, k: primals)

    transforms = {
        "vmap": lambda f, *a, **k: _tagging(tf.vmap(f, *a, **k), lambda a, k: (a, k)),
        "jvp": _tagging(tf.jvp, lambda a, k: a[1:3]),
        "vjp": vjp,
        "grad": lambda f, *a, **k: _tagging(tf.grad(f, *a, **k), lambda a, k: (a, k)),
    }
    for module in (aetk.geometry.metrics, aetk.geometry.connection, aetk.geometry.curvature,
                   aetk.geometry.curves):
        for name, transform in transforms.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, transform)
    return FakeCuda()
