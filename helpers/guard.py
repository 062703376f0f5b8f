"""Snapshots of the state a learner's function can change by accident, and how to put it back.

A function under test can leave hooks on a model, switch it to train mode, edit a weight in place,
turn gradient tracking off, or change torch's default dtype. `StateGuard` records all of that
before the call (cheaply: hook handles, mode flags, each parameter's version counter and storage
address, never a copy of a large model), then after the call undoes what it can and lists, in plain
words, what changed. Weights edited in place are restored exactly on small models (a copy is taken
up front when the model has at most `COPY_LIMIT` numbers) and reported on large ones.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

COPY_LIMIT = 5_000_000  # numbers of parameters + buffers up to which a model's weights are copied and restored
_TORCH_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def find_models(values: Iterable[Any]) -> list[torch.nn.Module]:
    """The distinct nn.Modules among `values` (looking one level into lists, tuples and dicts)."""
    found: dict[int, torch.nn.Module] = {}
    for value in values:
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            if isinstance(item, torch.nn.Module):
                found.setdefault(id(item), item)
    return list(found.values())


def _fingerprint(tensor: torch.Tensor) -> float:
    """The sum of a tensor's values: catches edits through `.data`, which bypass the version counter
    (about 40 ms for all of SmolLM2's weights on one thread). NaN compares unequal, so a NaN edit shows."""
    with torch.no_grad():
        return float(tensor.detach().sum()) if tensor.numel() else 0.0


def _library_hook(hook) -> bool:
    """True for hooks a library installs once and keeps on purpose: transformers adds inert output-capturing
    hooks to every layer the first time attention patterns or hidden states are requested (e.g. the first
    `run_with_cache` of `hook_pattern` on a bridge). They are not the learner's, and removing them would break
    that library's later calls."""
    return getattr(hook, "__module__", "") == "transformers.utils.output_capturing"


def _lens_name(model: torch.nn.Module, hook_point) -> str | None:
    """The TransformerLens name a learner would use for a hook point (an alias such as blocks.0.hook_resid_pre
    rather than the bridge's own blocks.0.hook_in), or its own name."""
    own = getattr(hook_point, "name", None)
    aliases = [name for name, point in getattr(model, "hook_dict", {}).items() if point is hook_point and name != own]
    return aliases[-1] if aliases else own


def _module_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(module): name or "the model" for name, module in model.named_modules(remove_duplicate=True)}


@dataclass
class _ModelSnapshot:
    model: torch.nn.Module
    hooks: dict[int, dict[str, set]] = field(default_factory=dict)  # module id -> hook dict name -> keys / handle ids
    lens_hooks: dict[int, dict[str, list]] = field(default_factory=dict)  # HookPoint id -> fwd/bwd -> handles
    training: dict[int, bool] = field(default_factory=dict)
    weights: dict[str, tuple] = field(default_factory=dict)  # name -> (tensor id, version, data_ptr, requires_grad, sum)
    copy: dict[str, torch.Tensor] | None = None

    @classmethod
    def take(cls, model: torch.nn.Module) -> _ModelSnapshot:
        snap = cls(model)
        for module in model.modules():
            snap.hooks[id(module)] = {d: set(getattr(module, d, {}).keys()) for d in _TORCH_HOOK_DICTS}
            if hasattr(module, "fwd_hooks") and hasattr(module, "bwd_hooks"):
                snap.lens_hooks[id(module)] = {"fwd": list(module.fwd_hooks), "bwd": list(module.bwd_hooks)}
            snap.training[id(module)] = module.training
        tensors = dict(model.named_parameters())
        tensors.update(model.named_buffers())
        for name, tensor in tensors.items():
            snap.weights[name] = (id(tensor), tensor._version, tensor.data_ptr(), tensor.requires_grad, _fingerprint(tensor))
        if sum(t.numel() for t in tensors.values()) <= COPY_LIMIT:
            snap.copy = {name: t.detach().clone() for name, t in tensors.items()}
        return snap

    def restore(self) -> list[str]:
        """Undo what changed since the snapshot; return one sentence per kind of change."""
        model, changes = self.model, []
        names = _module_names(model)
        modules = {id(m): m for m in model.modules()}
        # Hooks: TransformerLens hook points first (their handles remove the torch hook too), then raw torch hooks.
        left = []
        for key, before in self.lens_hooks.items():
            module = modules.get(key)
            if module is None:
                continue
            for direction in ("fwd", "bwd"):
                current = getattr(module, f"{direction}_hooks")
                for handle in [h for h in current if all(h is not b for b in before[direction])]:
                    handle.hook.remove()
                    current.remove(handle)
                    left.append(_lens_name(model, module) or names.get(key, "?"))
        for key, module in modules.items():
            before = self.hooks.get(key)
            for dict_name in _TORCH_HOOK_DICTS:
                hooks = getattr(module, dict_name, None)
                if hooks is None:
                    continue
                for hook_id in [k for k in hooks if (before is None or k not in before[dict_name])
                                and not _library_hook(hooks[k])]:
                    del hooks[hook_id]
                    for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
                        getattr(module, extra, {}).pop(hook_id, None)
                    left.append(names.get(key, "?"))
        if left:
            where = ", ".join(sorted(set(left))[:4]) + (", ..." if len(set(left)) > 4 else "")
            changes.append(f"it left {len(left)} hook(s) on the model ({where}); use `model.hooks(...)` or "
                           "`run_with_hooks`, or remove your hooks before returning (the check removed them)")
        # Train / eval mode.
        flipped = [m for key, m in modules.items() if key in self.training and m.training != self.training[key]]
        if flipped:
            for module in flipped:
                module.train(self.training[id(module)])
            mode = "train" if flipped[0].training is False else "eval"
            changes.append(f"it switched {len(flipped)} module(s) to {mode} mode (e.g. with model.train()); "
                           "the check put them back")
        # Weights: replaced, edited in place, or with requires_grad flipped.
        tensors = dict(model.named_parameters())
        tensors.update(model.named_buffers())
        edited, grad_flipped = [], []
        for name, (ident, version, pointer, requires_grad, total) in self.weights.items():
            tensor = tensors.get(name)
            if (tensor is None or id(tensor) != ident or tensor._version != version or tensor.data_ptr() != pointer
                    or _fingerprint(tensor) != total):
                edited.append(name)
            elif tensor.requires_grad != requires_grad:
                tensor.requires_grad_(requires_grad)
                grad_flipped.append(name)
        if edited:
            where = ", ".join(edited[:3]) + (", ..." if len(edited) > 3 else "")
            if self.copy is not None:
                with torch.no_grad():
                    for name in edited:
                        if name in tensors and tensors[name].shape == self.copy[name].shape:
                            tensors[name].copy_(self.copy[name])
                changes.append(f"it edited {len(edited)} weight tensor(s) of the model ({where}); a function under "
                               "test must not change weights (the check restored them)")
            else:
                changes.append(f"it edited {len(edited)} weight tensor(s) of the model in place ({where}); the model "
                               "is now changed for every later cell: reload it (model = load(...)) and fix your "
                               "function so it works on copies")
        if grad_flipped:
            changes.append(f"it changed requires_grad on {len(grad_flipped)} weight(s) (the check put it back)")
        return changes


@dataclass
class StateGuard:
    """Records torch's global state and every given model's state; `restore()` undoes and reports changes."""

    models: list[torch.nn.Module]
    grad_enabled: bool = True
    default_dtype: torch.dtype = torch.float32
    snapshots: list[_ModelSnapshot] = field(default_factory=list)

    @classmethod
    def take(cls, models: Iterable[torch.nn.Module] = ()) -> StateGuard:
        models = list(models)
        return cls(models, torch.is_grad_enabled(), torch.get_default_dtype(), [_ModelSnapshot.take(m) for m in models])

    def restore(self) -> list[str]:
        changes = []
        if torch.is_grad_enabled() != self.grad_enabled:
            torch.set_grad_enabled(self.grad_enabled)
            state = "off" if self.grad_enabled else "on"
            changes.append(f"it turned gradient tracking {state} for everything after it (use `with torch.no_grad():` "
                           "inside your function instead of torch.set_grad_enabled); the check switched it back")
        if torch.get_default_dtype() != self.default_dtype:
            torch.set_default_dtype(self.default_dtype)
            changes.append("it changed torch's default dtype (the check put it back)")
        for snapshot in self.snapshots:
            changes.extend(snapshot.restore())
        return changes
