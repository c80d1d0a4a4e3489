"""One model loader for reports, the CLI, sweeps and notebooks: :func:`load_model` turns a *spec* into an
``nn.Module`` in eval mode on the asked device, never touching the network.

A spec is a demo-zoo name, ``"minilm"``, a local Hugging Face model directory (or ``"hf:<dir>"``), a
``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` state dict (with ``builder``), a Lightning ``.ckpt`` (with
``module_class`` or ``builder``), a TorchScript file, or an ``nn.Module``. :func:`describe_spec` says which kind a
spec is (for provenance). Every ``torch.load`` runs with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .validate import interrupt_in

KINDS = ("module", "zoo", "minilm", "hf", "safetensors", "state_dict", "lightning", "torchscript")
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
ACCEPTED = (
    "a demo-zoo model name, 'minilm', a local Hugging Face model directory (config.json inside) or 'hf:<dir>', "
    "a .safetensors or .pt/.pth/.bin state dict (with builder='package.module:function'), a Lightning .ckpt "
    "(with module_class=<LightningModule class or 'package.module:Class'>), or a TorchScript file"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """The device ``device`` names: ``None`` (leave the model where it is loaded, the CPU), ``"cpu"``, ``"cuda"``
    (or ``"cuda:1"``), or ``"auto"`` (CUDA when available, else the CPU).

    >>> resolve_device("cpu"), resolve_device(None)
    (device(type='cpu'), None)
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    >>> resolve_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: device: expected 'cpu', 'cuda', 'cuda:<index>', 'auto' or None, got 'gpu'
    """
    if device is None or device == "":
        return None
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:<index>', 'auto' or None, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:<index>', 'auto' or None, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked, but torch sees no CUDA device here; pass 'cpu' or 'auto'")
    return dev


def _import(text: str, what: str) -> object:
    """``"package.module:attr"`` imported (errors name ``what``)."""
    mod, sep, attr = text.partition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"{what}: expected 'package.module:name', got {text!r}")
    try:
        obj = importlib.import_module(mod)
    except ImportError as e:
        raise ValueError(f"{what}: cannot import {mod!r} ({e}); is it installed or on sys.path?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what}: module {mod!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve_builder(builder: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """The function a ``builder`` names: a callable, or ``"package.module:function"`` imported.

    >>> resolve_builder("torch.nn:Identity")()
    Identity()
    >>> resolve_builder("torch.nn.Identity")
    Traceback (most recent call last):
    ...
    ValueError: builder: expected 'package.module:name', got 'torch.nn.Identity'
    """
    fn = _import(builder, "builder") if isinstance(builder, str) else builder
    if not callable(fn):
        raise ValueError(f"builder: expected a function returning the model, got {type(fn).__name__}")
    return fn


def _build(builder) -> nn.Module:
    m = resolve_builder(builder)()
    if not isinstance(m, nn.Module):
        raise ValueError(f"builder: {builder!r} returned a {type(m).__name__}, not an nn.Module")
    return m


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip holding ``code/`` and ``constants.pkl`` (``torch.save`` zips hold neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _path_of(spec: str) -> Path | None:
    p = Path(spec.removeprefix("hf:")).expanduser()
    return p if p.exists() else None


def describe_spec(spec: str | os.PathLike | nn.Module) -> str:
    """The kind of model ``spec`` names, one of :data:`KINDS`: ``"module"``, ``"zoo"``, ``"minilm"``, ``"hf"``,
    ``"safetensors"``, ``"state_dict"``, ``"lightning"`` or ``"torchscript"``; files are looked at, not loaded.

    >>> describe_spec("mlp-sgd-small-s0"), describe_spec("minilm"), describe_spec(torch.nn.Linear(2, 2))
    ('zoo', 'minilm', 'module')
    >>> describe_spec("sentence-transformers/all-MiniLM-L6-v2")
    Traceback (most recent call last):
    ...
    ValueError: spec: 'sentence-transformers/all-MiniLM-L6-v2' looks like a Hugging Face hub id ... never uses the
    network: download or save the model to a local directory ...
    """
    if isinstance(spec, nn.Module):
        return "module"
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"spec: expected a name or path ({ACCEPTED}), or an nn.Module; got {type(spec).__name__}")
    text = os.fspath(spec)
    if text == "minilm":
        return "minilm"
    from . import zoo

    if text in zoo.CATALOG:
        return "zoo"
    path = _path_of(text)
    if path is None:
        bare = text.removeprefix("hf:")
        if _HUB_ID.match(bare) and Path(bare).suffix.lower() not in (*STATE_DICT_SUFFIXES, ".safetensors", ".ckpt"):
            raise ValueError(
                f"spec: {text!r} looks like a Hugging Face hub id (no such local path); workbench never uses the "
                "network: download or save the model to a local directory (model.save_pretrained(dir)), pass that "
                "directory"
            )
        if text.startswith("hf:") or os.sep in text or Path(text).suffix:
            raise FileNotFoundError(f"spec: no such file or directory {bare!r}; expected {ACCEPTED}")
        zoo_names = ", ".join(zoo.names())
        raise ValueError(f"spec: no zoo model {text!r} and no such file; expected {ACCEPTED}. Zoo: {zoo_names}")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        raise ValueError(f"spec: directory {text!r} has no config.json (no Hugging Face model); expected {ACCEPTED}")
    if text.startswith("hf:"):
        raise ValueError(f"spec: {text!r} names a file; 'hf:' takes a model directory (config.json inside)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".ckpt":
        return "lightning"
    if suffix in TORCHSCRIPT_SUFFIXES or (suffix in STATE_DICT_SUFFIXES and _is_torchscript(path)):
        return "torchscript"
    if suffix in STATE_DICT_SUFFIXES:
        return "state_dict"
    raise ValueError(f"spec: unknown file kind {suffix or '(no suffix)'!r} of {text!r}; expected {ACCEPTED}")


def _load_hf(path: Path) -> nn.Module:
    import transformers

    config = json.loads((path / "config.json").read_text())
    archs = config.get("architectures") or []
    cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
    if cls is None and archs:
        raise ValueError(
            f"spec: {str(path)!r} is a {archs} model that transformers does not know; remote code is never run: "
            "load it yourself and pass the module"
        )
    cls = cls or transformers.AutoModel
    return cls.from_pretrained(str(path), local_files_only=True)


def _fit(model: nn.Module, state: dict, spec: str) -> nn.Module:
    """``state`` loaded strictly into ``model``; a prefix shared by every key (``model.`` of a LightningModule
    holding the network) is dropped when that is what makes the keys fit."""
    own_state = model.state_dict()
    own = set(own_state)
    if set(state) != own:
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) == 1 and all("." in k for k in state):
            stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
            if set(stripped) <= own:
                state = stripped
    by_storage = {}
    for k, v in own_state.items():  # tied weights (saved once by safetensors' save_model): fill the aliases
        by_storage.setdefault((v.data_ptr(), v.shape), []).append(k)
    for keys in by_storage.values():
        present = [k for k in keys if k in state]
        for k in keys:
            if present and k not in state:
                state = {**state, k: state[present[0]]}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"spec: the weights in {spec!r} do not fit the module builder returned: {e}") from None
    return model


def _torch_load(path: Path, spec: str, map_location) -> object:
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError: report the file, not torch's internals
        hidden = interrupt_in(e)  # a Ctrl-C that torch's C++ code turned into a RuntimeError
        if hidden is not None:
            raise hidden from e
        raise ValueError(
            f"spec: {spec!r} cannot be read with torch.load(weights_only=True) ({type(e).__name__}): it holds "
            "pickled objects (a whole model?) or is damaged; save model.state_dict(), or a TorchScript file"
        ) from None


def _state_dict_of(obj: object, spec: str) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError(f"spec: {spec!r} holds a {type(obj).__name__} that is no state dict (name -> tensor)")


def _load_lightning(path: Path, spec: str, module_class, builder, map_location) -> nn.Module:
    if module_class is not None:
        cls = _import(module_class, "module_class") if isinstance(module_class, str) else module_class
        loader = getattr(cls, "load_from_checkpoint", None)
        if loader is not None:
            kw = {"weights_only": True} if "weights_only" in inspect.signature(loader).parameters else {}
            return loader(str(path), map_location=map_location, **kw)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"module_class: expected a LightningModule class, got {module_class!r}")
        ckpt = _torch_load(path, spec, map_location)
        hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
        return _fit(cls(**hparams), _state_dict_of(ckpt, spec), spec)
    if builder is None:
        raise ValueError(
            "module_class: a Lightning .ckpt needs module_class=<LightningModule class or 'package.module:Class'>, "
            "or builder='package.module:function' returning the module its state_dict fits"
        )
    return _fit(_build(builder), _state_dict_of(_torch_load(path, spec, map_location), spec), spec)


def load_model(
    spec: str | os.PathLike | nn.Module,
    *,
    device: str | torch.device | None = None,
    builder: str | Callable[[], nn.Module] | None = None,
    module_class: str | type | None = None,
    weights_only: bool = True,
) -> nn.Module:
    """The model ``spec`` names (see :func:`describe_spec`), in eval mode, on ``device`` (see
    :func:`resolve_device`; ``None``: where it was loaded, the CPU). Nothing is downloaded: Hugging Face
    directories load with ``local_files_only=True`` and their saved ``attn_implementation`` and dtype; the class
    comes from the config's ``architectures`` (``AutoModel`` when it has none). State dicts (``.safetensors``,
    ``.pt``, ``.pth``, ``.bin``) go into the module ``builder`` returns (``"package.module:function"`` or a
    callable); a Lightning ``.ckpt`` is loaded by ``module_class.load_from_checkpoint`` (or its ``state_dict``
    into ``builder``'s module); TorchScript files by ``torch.jit.load``. ``weights_only`` must stay ``True``.

    >>> load_model("missing.safetensors", builder="torch.nn:Identity")
    Traceback (most recent call last):
    ...
    FileNotFoundError: spec: no such file or directory 'missing.safetensors'; expected a demo-zoo model name, ...
    >>> load_model("mlp-sgd-small-s0", device="cpu").training
    False
    """
    if weights_only is not True:
        raise ValueError("weights_only: only weights_only=True loading is supported (no pickled code is run)")
    dev = resolve_device(device)
    kind = describe_spec(spec)
    map_location = dev if dev is not None else "cpu"
    text = "" if kind == "module" else os.fspath(spec)
    path = None if kind in ("module", "zoo", "minilm") else _path_of(text)
    if module_class is not None and kind != "lightning":
        raise ValueError(f"module_class: only a Lightning .ckpt takes module_class; {text or 'module'!r} is {kind}")
    if builder is not None and kind in ("module", "zoo", "minilm", "hf", "torchscript"):
        raise ValueError(f"builder: a {kind} spec ({text or 'module'!r}) brings its own architecture; drop builder")
    if kind == "module":
        model = spec
    elif kind == "zoo":
        from . import zoo

        model = zoo.load(text)
    elif kind == "minilm":
        from . import zoo

        model = zoo.minilm()[0]
    elif kind == "hf":
        model = _load_hf(path)
    elif kind == "torchscript":
        model = torch.jit.load(str(path), map_location=map_location)
    elif kind == "lightning":
        model = _load_lightning(path, text, module_class, builder, map_location)
    else:
        if builder is None:
            raise ValueError(
                f"builder: the state dict {text!r} needs builder='package.module:function' (or a callable) "
                "returning the module it fits"
            )
        model = _build(builder)
        if kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device=str(map_location))
        else:
            state = _state_dict_of(_torch_load(path, text, map_location), text)
        model = _fit(model, state, text)
    if dev is not None:
        model = model.to(dev)
    return model.eval()
