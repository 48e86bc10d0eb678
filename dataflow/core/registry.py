"""The operator registry, and discovery of user operators from project folders."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path


class OperatorImportError(ImportError):
    """A user operator file could not be imported; says which file and why."""


class Registry:
    """Name -> class map filled by ``@OPERATOR_REGISTRY.register()``."""

    def __init__(self, name: str):
        self._name = name
        self._obj_map: dict[str, type] = {}
        self._builtins_loaded = False
        self._loaded_paths: set[str] = set()

    def register(self, obj: type | None = None, *, name: str | None = None) -> Callable | type:
        """Register ``obj`` (or, used as ``@register()``, the decorated class) under ``name`` or its class name.

        The same class registered again (a module imported twice) replaces the first silently; a different class
        under a taken name raises ``KeyError`` naming both files.
        """

        def deco(cls: type) -> type:
            key = name or cls.__name__
            existing = self._obj_map.get(key)
            if existing is not None and _identity(existing) != _identity(cls):
                raise KeyError(
                    f"an operator named {key!r} is already registered from {_source_of(existing)}; "
                    f"{_source_of(cls)} registers another class under that name"
                )
            self._obj_map[key] = cls
            return cls

        return deco(obj) if obj is not None else deco

    def get(self, name: str, *, user_operators: bool = True) -> type:
        """The class registered as ``name``; user operator folders are imported only when ``user_operators``
        and ``name`` is not a built-in (importing them runs their code)."""
        self.load_builtins()
        if name not in self._obj_map and user_operators:
            self.load_user_operators()
        if name not in self._obj_map and not user_operators:
            raise KeyError(
                f"no built-in operator named {name!r}; user operators (./operators, "
                "DATAFLOW_OPERATORS_PATH) were not imported: their code runs only when asked"
            )
        if name not in self._obj_map:
            hint = difflib.get_close_matches(name, self._obj_map, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise KeyError(f"no operator named {name!r}{suggestion} (see `dataflow ops`)")
        return self._obj_map[name]

    def __contains__(self, name: str) -> bool:
        self.load_builtins()
        return name in self._obj_map

    def get_obj_map(self) -> dict[str, type]:
        self.load_builtins()
        self.load_user_operators()
        return dict(sorted(self._obj_map.items()))

    def loaded(self) -> dict[str, type]:
        """The operators imported so far: the built-ins, and user operators only where already loaded
        (nothing from a user folder is imported here)."""
        self.load_builtins()
        return dict(sorted(self._obj_map.items()))

    def command_methods(self, command: str, *, user_operators: bool = False) -> dict[str, type]:
        """``{method: class}`` of the operators that back ``dataflow <command>``: each declares
        ``cli_command = command`` and the ``cli_methods`` it answers to. Among the operators imported so
        far unless ``user_operators`` (then the user folders are imported too). Two classes claiming one
        method raise ``KeyError`` naming both."""
        classes = self.get_obj_map() if user_operators else self.loaded()
        out: dict[str, type] = {}
        for cls in classes.values():
            if getattr(cls, "cli_command", None) != command:
                continue
            for method in getattr(cls, "cli_methods", ()) or ():
                if method in out and out[method] is not cls:
                    raise KeyError(
                        f"`dataflow {command} --method {method}` is claimed by both {out[method].__name__} "
                        f"({_source_of(out[method])}) and {cls.__name__} ({_source_of(cls)})"
                    )
                out[method] = cls
        return out

    def for_command(self, command: str, method: str | None = None, *, user_operators: bool = False) -> type:
        """The operator class that backs ``dataflow <command>`` (it declares ``cli_command = command``).

        With ``method``, the one whose ``cli_methods`` name it (:meth:`command_methods`); a method no
        imported operator declares is looked for in the user operator folders when ``user_operators``.
        Without, the only operator of the command. A command runs no user code unasked."""
        if method is not None:
            methods = self.command_methods(command)
            if method not in methods and user_operators:
                methods = self.command_methods(command, user_operators=True)
            if method not in methods:
                hint = difflib.get_close_matches(method, methods, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise KeyError(
                    f"no operator declares `dataflow {command} --method {method}`{suggestion} "
                    f"(methods: {', '.join(sorted(methods)) or 'none'})"
                )
            return methods[method]
        classes = self.get_obj_map().values() if user_operators else self.loaded().values()
        found = [cls for cls in classes if getattr(cls, "cli_command", None) == command]
        if len(found) != 1:
            names = ", ".join(c.__name__ for c in found) or "none"
            raise KeyError(
                f"`dataflow {command}` needs exactly one operator declaring cli_command = {command!r}; found {names}"
            )
        return found[0]

    def names(self) -> list[str]:
        return list(self.get_obj_map())

    def load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            importlib.import_module("dataflow.operators.core_vision")

    def load_user_operators(self, extra_dirs: Iterable[str | os.PathLike] = ()) -> list[str]:
        """Import every ``*.py`` in the user operator folders; returns the files loaded this call.

        Folders: ``./operators``, each of ``extra_dirs``, and those in ``DATAFLOW_OPERATORS_PATH``
        (``os.pathsep``-separated). A file that fails to import raises ``OperatorImportError``.
        """
        self.load_builtins()
        loaded = []
        for folder in user_operator_dirs(extra_dirs):
            for path in sorted(folder.glob("*.py")):
                if path.name.startswith(("_", "test_")):
                    continue
                key = str(path.resolve())
                if key in self._loaded_paths:
                    continue
                self._loaded_paths.add(key)
                _import_file(path)
                loaded.append(key)
        return loaded


def _source_of(cls: type) -> str:
    """The file that defines ``cls``, or its module name when it has none (a REPL, exec'd code)."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:  # a module without a file (``__main__`` of a REPL, a docs block) or no longer imported
        path = None
    if path is None:
        path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return os.path.abspath(path) if path else f"<module {cls.__module__}>"


def _identity(cls: type) -> tuple[str, str]:
    """What makes two class objects "the same class": the defining file and the qualified name."""
    return _source_of(cls), cls.__qualname__


def user_operator_dirs(extra_dirs: Iterable[str | os.PathLike] = ()) -> list[Path]:
    candidates = [Path.cwd() / "operators", *map(Path, extra_dirs)]
    candidates += [Path(p) for p in os.environ.get("DATAFLOW_OPERATORS_PATH", "").split(os.pathsep) if p]
    seen, out = set(), []
    for c in candidates:
        if c.is_dir() and c.resolve() not in seen:
            seen.add(c.resolve())
            out.append(c)
    return out


def _import_file(path: Path) -> None:
    module_name = f"dataflow_user_operators.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise OperatorImportError(
            f"cannot import user operator file {path}: {type(exc).__name__}: {exc} (line {where.lineno})"
        ) from exc


OPERATOR_REGISTRY = Registry("operators")
