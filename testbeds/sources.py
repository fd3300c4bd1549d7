"""The project source a computation depends on, for cache keys.

A cached value (a training run, a trajectory value, a leaderboard score) must be recomputed
when any code it depends on changes, and only then. :func:`module_dependencies` finds the
project modules a module depends on by reading its source with :mod:`ast`: the module itself,
every project module it imports anywhere in the file (top level, inside functions, under
``if TYPE_CHECKING``, relative imports, ``from package import submodule``), the
``__init__.py`` of every package on the way, and so on transitively. :func:`source_hash`
hashes the source of that closure::

    >>> from testbeds.sources import module_dependencies, source_hash
    >>> "metrics.entk" in module_dependencies("hypotheses.trajectories")
    True
    >>> key = source_hash("testbeds.modadd", some_metric_function)   # 16 hex digits

Project modules are the files inside the top-level packages ``testbeds``, ``metrics``,
``hypotheses`` and ``leaderboard`` next to this package (found by path arithmetic: nothing is
imported to find them, so a file that is not importable under its dotted name, such as a
pytest file, still works). Third-party and standard-library imports are not followed: their
versions belong in the key separately. Code loaded at run time rather than imported
(``importlib.import_module(...)``, an entry point, a registry that imports lazily) is not
followed: a caller that depends on code loaded that way names it as an extra target (as the
leaderboard does with a task's testbed package).

A file outside the project (a plug-in method file, a script) is a valid target too: it is
hashed with the project modules it imports. Its own name in the hash is its file name, so
moving it does not invalidate its values, editing it does.

Parsing is cached per process, keyed by each file's path, modification time and size, so an
edited file is read again in a long-lived process; hashing reads the closure's bytes each time.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("testbeds", "metrics", "hypotheses", "leaderboard")


def _project_file(name: str) -> Path | None:
    """The file of project module ``name`` (a package means its ``__init__.py``), else None."""
    parts = name.split(".")
    if parts[0] not in PACKAGES or not all(p.isidentifier() for p in parts):
        return None
    base = os.path.join(ROOT, *parts)
    for path in (os.path.join(base, "__init__.py"), base + ".py"):
        if os.path.isfile(path):
            return Path(path)
    return None


def _module_name(path: Path) -> str | None:
    """The dotted name of a project file, or None when the file lies outside the project."""
    try:
        relative = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    parts = list(relative.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    if not parts or parts[0] not in PACKAGES or not all(p.isidentifier() for p in parts):
        return None
    name = ".".join(parts)
    return name if _project_file(name) == path.resolve() else None


def _parents(name: str) -> list[str]:
    """``a.b.c`` → ``["a", "a.b", "a.b.c"]``: importing a module runs its packages' inits."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _stamp(path: Path) -> tuple[str, int, int]:
    stat = os.stat(path)
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4096)
def _imported_names(path: str, mtime_ns: int, size: int, package: str | None) -> frozenset[str]:
    """Every dotted name in the project's packages that a file imports (absolute; relative
    ones resolved against ``package``), with their parent packages, and with each
    ``from x import y`` also giving ``x.y`` (it is a submodule when such a file exists).
    ``mtime_ns`` and ``size`` only key the cache."""
    tree = ast.parse(Path(path).read_bytes(), filename=path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    continue  # a relative import in a file outside any package
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    candidates = {p for name in names for p in _parents(name)}
    return frozenset(n for n in candidates if n.split(".", 1)[0] in PACKAGES)


def _package_of(name: str, path: Path) -> str:
    """The package relative imports in module ``name`` (file ``path``) resolve against."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _is_folder(name: str) -> bool:
    """Whether dotted ``name`` is a folder of the project (a package, with or without an init)."""
    return os.path.isdir(os.path.join(ROOT, *name.split(".")))


class _Finder:
    """Look-ups of project files, each done once within one closure."""

    def __init__(self) -> None:
        self.file = functools.cache(_project_file)
        self.folder = functools.cache(_is_folder)

    def imports(self, path: Path, package: str | None) -> set[str]:
        """The project modules (and their parent packages) a file imports directly."""
        found = set()
        for name in _imported_names(*_stamp(path), package):
            parent = name.rpartition(".")[0]
            # a submodule lies in a folder: skips the names `from module import name` brings
            if (not parent or self.folder(parent)) and self.file(name) is not None:
                found.add(name)
        return found


def _closure(start: Iterable[str]) -> set[str]:
    find = _Finder()
    seen: set[str] = set()
    todo = list(start)  # plus their packages (a folder without __init__.py has no source)
    todo += [p for name in start for p in _parents(name)[:-1] if find.file(p) is not None]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = find.file(name)
        if path is None:
            raise ValueError(f"{name!r} is not a module of the project's packages {PACKAGES}")
        seen.add(name)
        todo.extend(find.imports(path, _package_of(name, path)) - seen)
    return seen


def _is_path(target: str | os.PathLike) -> bool:
    text = os.fspath(target)
    return isinstance(target, os.PathLike) or text.endswith(".py") or os.sep in text


def _resolve(target: str | os.PathLike) -> tuple[set[str], Path | None]:
    """(project modules whose closure is wanted, a file outside the project or None)."""
    if not _is_path(target):
        name = os.fspath(target)
        if _project_file(name) is None:
            raise ValueError(
                f"{name!r} is not a module of the project's packages {PACKAGES} under {ROOT}"
            )
        return {name}, None
    path = Path(target).resolve()
    if not path.is_file():
        raise ValueError(f"no such source file: {os.fspath(target)!r}")
    name = _module_name(path)
    if name is not None:
        return {name}, None
    return _Finder().imports(path, None), path


def module_dependencies(module: str | os.PathLike) -> tuple[str, ...]:
    """The module and, transitively, every project module it imports, sorted.

    ``module`` is a dotted name (``"hypotheses.trajectories"``) or a path to a ``.py`` file.
    A project file gives its dotted name; a file outside the project appears as its resolved
    path (first: a path starts with ``/``, which sorts before letters), followed by the project
    modules it depends on. Raises ValueError for a name that is not a project module or a path
    that is not a file.
    """
    names, outside = _resolve(module)
    closure = sorted(_closure(names))
    return (str(outside), *closure) if outside is not None else tuple(closure)


@dataclass(frozen=True)
class _Interactive:
    """A callable with source text but no file (a notebook cell)."""

    qualname: str
    text: str


def project_modules() -> tuple[str, ...]:
    """Every module of the project's packages (every ``.py`` file under them), sorted."""
    names = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = _module_name(path)
            if name is not None:
                names.add(name)
    return tuple(sorted(names))


def _target_source(target: Any) -> str | os.PathLike | _Interactive:
    """The module name or file that defines ``target`` (see :func:`source_hash`)."""
    if isinstance(target, (str, os.PathLike)):
        return target
    if isinstance(target, ModuleType):
        file = getattr(target, "__file__", None)
        if file is not None:
            return Path(file)
        if _project_file(target.__name__) is not None:
            return target.__name__
        raise ValueError(f"module {target.__name__!r} has no source file to hash")
    if isinstance(target, functools.partial):
        return _target_source(target.func)
    if isinstance(target, (classmethod, staticmethod)):
        return _target_source(target.__func__)
    if inspect.ismethod(target):
        return _target_source(target.__func__)
    if callable(target):
        module_name = getattr(target, "__module__", None)
        if module_name is None and not inspect.isfunction(target) and not inspect.isclass(target):
            module_name = type(target).__module__
        module = sys.modules.get(module_name) if module_name else None
        if module is not None and getattr(module, "__file__", None):
            return Path(module.__file__)
        if module_name and _project_file(module_name) is not None:
            return module_name
        try:
            file = inspect.getsourcefile(target)
        except TypeError:
            file = None
        if file is not None and Path(file).is_file():
            return Path(file)
        try:  # typed at an interactive prompt whose text is kept (a notebook cell)
            text = inspect.getsource(target)
        except (OSError, TypeError) as err:
            raise ValueError(
                f"cannot find the source of {target!r} (module {module_name!r}); define it in "
                "a file to give it a cache key"
            ) from err
        return _Interactive(getattr(target, "__qualname__", type(target).__qualname__), text)
    raise TypeError(
        "a source_hash target is a module name, module, file path or callable; "
        f"got {type(target).__name__}"
    )


def source_hash(*targets: Any) -> str:
    """16-hex-digit SHA-256 of the source of everything the targets depend on.

    Each target is a dotted module name, a module object, a path to a ``.py`` file, or a
    callable (its ``__module__``'s file; a ``functools.partial`` means its wrapped function; a
    callable defined in a file outside the project, such as a plug-in, means that file). The
    hash covers (module name, source bytes) of the union of the targets' closures
    (:func:`module_dependencies`); a file outside the project enters under its file name. A
    callable without a file whose text is known (a notebook cell) enters with its text and
    every project module (:func:`project_modules`), since its imports cannot be read; one
    without any source raises ValueError.
    Arguments bound into a ``partial`` or a closure are not source: put them in the key
    separately.
    """
    if not targets:
        raise ValueError("source_hash needs at least one target")
    names: set[str] = set()
    entries: list[tuple[str, bytes]] = []
    for target in targets:
        source = _target_source(target)
        if isinstance(source, _Interactive):
            # it may call anything: its own text and every project module
            entries.append((f"<interactive>.{source.qualname}", source.text.encode()))
            names.update(project_modules())
            continue
        start, file = _resolve(source)
        names |= start
        if file is not None:
            entries.append((file.name, file.read_bytes()))
    entries += [(name, _project_file(name).read_bytes()) for name in _closure(names)]
    digest = hashlib.sha256()
    for label, source in sorted(set(entries)):
        digest.update(f"{label}\0{len(source)}\0".encode())
        digest.update(source)
    return digest.hexdigest()[:16]
