"""``model=custom``: your own torch module, from a Python file or from an importable ``_target_``.

Two ways, one of them per run:

* ``model.path=/x/my_model.py model.class_name=MyNet`` (optional ``+model.kwargs={width: 64}``): the file is
  loaded with ``importlib.util.spec_from_file_location``, so no ``PYTHONPATH`` or installation is needed;
  its folder is appended to ``sys.path`` so that the file's own imports of sibling modules work.
* ``+model.builder={_target_: my_pkg.MyNet, ...}``: built with Hydra's ``instantiate``; the module must be
  importable (installed, or its folder on ``PYTHONPATH``).

:func:`model_source_files` names the files whose content defines the model, for cache keys.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import sys
import sysconfig
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import PipelineError
from pipeline.core.specs import InputSpec
from pipeline.models.bundle import IMAGE_INPUT, ModelBundle

if TYPE_CHECKING:
    from pipeline.core.config import ModelConfig

USAGE = (
    "model=custom model.path=/path/to/my_model.py model.class_name=MyNet ['+model.kwargs={width:64}'] "
    "model.input_shape=[3,224,224], or +model.builder._target_=my_pkg.MyNet for an importable class"
)


# ------------------------------------------------------------------------------------------------ build
def build_custom(cfg: "ModelConfig") -> ModelBundle:
    """Build the user's torch module (``model.path`` + ``model.class_name``, or ``model.builder``).

    Args:
        cfg: the ``model`` group; ``input_kind``/``input_shape`` describe the module's input.

    Returns:
        The bundle: module in eval mode, input specs, output names; a classifier when the module
        returns one ``(batch, model.num_classes)`` tensor.

    Raises:
        PipelineError: neither or both ways given, missing file or class, a class that fails to
            construct or is not a ``torch.nn.Module``, a module that fails on ``input_shape``.
    """
    if cfg.path and cfg.builder:
        raise PipelineError(
            f"model=custom got both model.path ({cfg.path}) and model.builder ({dict(cfg.builder)})",
            "use one: model.path + model.class_name for a file, or model.builder._target_ for an importable class "
            "(drop the other with '~model.builder' or model.path=null)",
        )
    if cfg.path:
        module, origin = _module_from_file(cfg)
    elif cfg.builder:
        module, origin = _module_from_target(cfg)
    else:
        raise PipelineError("model=custom needs model.path (a .py file) or model.builder._target_", f"e.g. {USAGE}")
    from pipeline.models.zoo import _probe_outputs, _token_specs

    module.eval()
    if cfg.input_kind == "tokens":
        inputs = _token_specs(cfg, int(cfg.vocab_size))
    elif cfg.input_kind in ("image", "features"):
        inputs = [InputSpec(IMAGE_INPUT, tuple(int(d) for d in cfg.input_shape), "float32")]
    else:
        raise PipelineError(f"unknown model.input_kind '{cfg.input_kind}'", "use image, features or tokens")
    outputs = _probe_outputs(module, inputs, cfg)
    names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    is_classifier = len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] == cfg.num_classes
    return ModelBundle(
        name=cfg.name,
        module=module,
        inputs=inputs,
        output_names=names,
        task="classification" if is_classifier else "features",
        num_classes=int(cfg.num_classes) if is_classifier else None,
        notes=f"custom module {origin} (seed {cfg.seed})",
    )


def _as_torch_module(obj: Any, what: str, hint: str) -> Any:
    import torch

    if not isinstance(obj, torch.nn.Module):
        raise PipelineError(f"model=custom: {what} returned {type(obj).__name__}, not a torch.nn.Module", hint)
    return obj


def _module_from_target(cfg: "ModelConfig") -> tuple[Any, str]:
    builder = dict(cfg.builder or {})
    target = builder.get("_target_")
    if not target:
        raise PipelineError("model=custom: model.builder has no _target_", f"e.g. {USAGE}")
    _import_target_module(str(target))
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    from pipeline.models.zoo import _seeded

    _seeded(cfg.seed)
    try:
        module = instantiate(builder, **dict(cfg.kwargs or {}))
    except (HydraException, ImportError, TypeError, ValueError) as err:
        raise PipelineError(
            f"model=custom: could not build {target}: {err}",
            "check model.builder._target_ (an importable class or function) and its arguments",
        ) from err
    hint = "point model.builder._target_ at a torch.nn.Module class or a function returning one"
    return _as_torch_module(module, str(target), hint), str(target)


def _import_target_module(target: str) -> None:
    # Import the _target_'s module ourselves: Hydra's message for a module that is not on the path does
    # not say how to make it importable.
    module_name = target.rpartition(".")[0]
    if not module_name:
        raise PipelineError(f"model.builder._target_={target} names no module", f"write module.Class, or use {USAGE}")
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise PipelineError(
                f"model.builder._target_={target}: module '{err.name}' cannot be imported (it is not installed "
                "and its folder is not on the Python path)",
                "load the class from its file instead: model.path=/path/to/file.py model.class_name=<Class> "
                "(no set-up needed), or add the module's folder to PYTHONPATH "
                "(PYTHONPATH=/path/to/folder trt-pipeline ...)",
            ) from err
        raise PipelineError(
            f"model.builder._target_={target}: importing '{module_name}' failed: {err}",
            f"install the package '{err.name}' that {module_name} imports",
        ) from err
    except Exception as err:  # noqa: BLE001 - the user's module raised while importing: report it with its name
        raise PipelineError(
            f"model.builder._target_={target}: importing '{module_name}' raised {type(err).__name__}: {err}",
            f"fix the module {module_name}",
        ) from err


def _module_from_file(cfg: "ModelConfig") -> tuple[Any, str]:
    path = _model_file(cfg)
    source = load_source_file(path)
    defined = defined_classes(source)
    if not cfg.class_name:
        example = defined[0] if defined else "MyNet"
        raise PipelineError(
            f"model.path={path} needs model.class_name: the class (or function) that builds the model",
            f"classes defined in {path.name}: {', '.join(defined) or 'none'} (e.g. model.class_name={example})",
        )
    factory = getattr(source, cfg.class_name, None)
    if factory is None or not callable(factory):
        raise PipelineError(
            f"model.class_name={cfg.class_name}: {path} defines no class or function of that name",
            f"classes defined in {path.name}: {', '.join(defined) or 'none'}",
        )
    from pipeline.models.zoo import _seeded

    kwargs = dict(cfg.kwargs or {})
    _seeded(cfg.seed)
    try:
        module = factory(**kwargs)
    except Exception as err:  # noqa: BLE001 - the user's constructor: any failure is reported with its arguments
        raise PipelineError(
            f"model=custom: {cfg.class_name}(**{kwargs}) from {path} failed: {type(err).__name__}: {err}",
            f"pass the constructor's arguments as '+model.kwargs={{name: value}}'; it takes {_signature(factory)}",
        ) from err
    hint = f"model.class_name must name a torch.nn.Module subclass (or a function returning one) in {path.name}"
    return _as_torch_module(module, f"{cfg.class_name}(**{kwargs})", hint), f"{cfg.class_name} from {path}"


def _signature(factory: Any) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return "(unknown signature)"


def _model_file(cfg: "ModelConfig") -> Path:
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        where = "does not exist" if not path.exists() else "is not a file"
        raise PipelineError(
            f"model.path={cfg.path} {where} (resolved: {path.resolve()})",
            "give the .py file that defines your model class; a relative path starts from the directory you run in",
        )
    if path.suffix != ".py":
        raise PipelineError(f"model.path={cfg.path} is not a Python file (.py)", f"e.g. {USAGE}")
    return path.resolve()


def load_source_file(path: Path) -> types.ModuleType:
    """Execute a Python file as a fresh module (no ``PYTHONPATH`` needed) and return it.

    The module is registered in ``sys.modules`` under a private name derived from the path (never the
    file's stem, which could shadow an installed module such as ``onnx``); the file's folder is appended
    to ``sys.path`` (after everything else, for the same reason) so its imports of sibling modules work.

    Raises:
        PipelineError: the file cannot be loaded or raises while executing.
    """
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    name = f"_trt_pipeline_user_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PipelineError(f"model.path={path}: Python cannot load this file", "give a .py source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look the module up while the file executes
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file: any error is theirs to fix, reported with the file
        sys.modules.pop(name, None)
        raise PipelineError(
            f"model.path={path}: executing the file raised {type(err).__name__}: {err}",
            f"fix the file (it must run with `python {path}`); modules next to it are importable",
        ) from err
    return module


def defined_classes(module: types.ModuleType) -> list[str]:
    """Names of the classes a loaded file defines itself (not the ones it imports), in file order."""
    return [n for n, obj in vars(module).items() if inspect.isclass(obj) and obj.__module__ == module.__name__]


# ------------------------------------------------------------------------------------- source files
def model_source_files(model_cfg: "ModelConfig") -> list[Path]:
    """Files whose content defines the model, for cache keys (hash them with ``pipeline.core.artifacts.file_sha256``).

    * ``model=custom`` with ``model.path``: the file and the modules next to it that it imports, directly
      or through each other (found by parsing the import statements, without running anything).
    * ``model=custom`` with ``model.builder._target_``: the target's module file and its local imports when
      it lives outside ``site-packages`` and the standard library (installed packages are versioned);
      else nothing.
    * ``model=onnx``: the ONNX file and the external-data files its initializers reference.
    * zoo models: nothing (their definition is the pipeline's own code and the config).

    Args:
        model_cfg: the ``model`` group.

    Returns:
        Absolute paths, sorted, without duplicates.

    Raises:
        PipelineError: ``model.path`` names a file that does not exist.
    """
    if model_cfg.name == "onnx":
        return _onnx_files(model_cfg.onnx_path) if model_cfg.onnx_path else []
    if model_cfg.name != "custom":
        return []
    if model_cfg.path:
        main = _model_file(model_cfg)
        return sorted({main, *_local_imports(main, main.parent)})
    target = str(dict(model_cfg.builder or {}).get("_target_") or "")
    found = _user_module_file(target.rpartition(".")[0]) if "." in target else None
    if found is None:
        return []
    origin, root = found
    return sorted({origin, *_local_imports(origin, root)})


def _user_module_file(module_name: str) -> tuple[Path, Path] | None:
    """``(module file, folder on sys.path that holds it)`` for a module outside installed packages, else None."""
    # Top-level lookup first: find_spec of a top-level name imports nothing, so an installed package
    # (torch.nn.Linear) is recognised without importing torch.
    try:
        top = importlib.util.find_spec(module_name.split(".")[0])
    except (ImportError, ValueError):
        return None
    if top is None or not top.origin or _installed(Path(top.origin)):
        return None
    top_file = Path(top.origin).resolve()
    root = top_file.parent.parent if top.submodule_search_locations is not None else top_file.parent
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if not spec or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).resolve(), root


def _installed(path: Path) -> bool:
    paths = sysconfig.get_paths()
    roots = {Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    resolved = path.resolve()
    return any(resolved.is_relative_to(r) for r in roots) or "site-packages" in resolved.parts


def _local_imports(file: Path, root: Path) -> set[Path]:
    """Python files under ``root`` that ``file`` imports, transitively (static: nothing is executed)."""
    found: set[Path] = set()
    todo = [file]
    while todo:
        current = todo.pop()
        for candidate in _imported_files(current, root):
            if candidate not in found and candidate != file:
                found.add(candidate)
                todo.append(candidate)
    return found


def _imported_files(file: Path, root: Path) -> set[Path]:
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return set()  # an unreadable file is still hashed itself; its imports cannot be followed
    dotted: list[tuple[Path, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            dotted += [(root, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > len(file.parents):
                continue  # a relative import above the file system root cannot resolve
            base = file.parents[node.level - 1] if node.level else root  # `from . import x`: the file's folder
            head = node.module or ""
            dotted += [(base, head)] if head else []
            names = [alias.name for alias in node.names if alias.name != "*"]
            dotted += [(base, f"{head}.{name}" if head else name) for name in names]
    files: set[Path] = set()
    for base, name in dotted:
        files |= _module_paths(base, name, root)
    return files


def _module_paths(base: Path, dotted: str, root: Path) -> set[Path]:
    # a.b.c under base: a/__init__.py, a/b/__init__.py, a/b/c.py or a/b/c/__init__.py, where they exist.
    out: set[Path] = set()
    current = base
    for part in dotted.split("."):
        if (current / part / "__init__.py").is_file():
            current = current / part
            out.add((current / "__init__.py").resolve())
        elif (current / f"{part}.py").is_file():
            out.add((current / f"{part}.py").resolve())
            break
        else:
            break
    root = root.resolve()
    return {p for p in out if p.is_relative_to(root)}


def _onnx_files(onnx_path: str) -> list[Path]:
    path = Path(onnx_path).expanduser().resolve()
    if not path.is_file():
        return []  # the export stage reports the missing file
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError):
        return [path]  # not an ONNX model: the export stage says so, with what to do
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    extra = {(path.parent / ExternalDataInfo(t).location).resolve() for t in external}
    return sorted({path, *extra})
