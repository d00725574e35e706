"""The error tree drawn in ``engine.errors``'s docstring is the tree of the classes.

Every error the engine raises on purpose derives from ``EngineError``, wherever it is
defined; the drawing is what a reader (and ``except`` clause) goes by, so it must not drift.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

import engine
from engine import errors


def drawn_tree() -> dict[str, str]:
    """Class name → parent name, read off the box drawing in the module docstring."""
    assert errors.__doc__ is not None
    parents: dict[str, str] = {}
    stack = ["EngineError"]
    for line in errors.__doc__.splitlines():
        match = re.match(r"^    ((?:[│ ] {3})*)[├└]── (\w+)", line)
        if match is None:
            continue
        depth = len(match.group(1)) // 4
        del stack[depth + 1 :]
        parents[match.group(2)] = stack[depth]
        stack.append(match.group(2))
    return parents


def engine_error_classes() -> dict[str, type[BaseException]]:
    for module in pkgutil.walk_packages(engine.__path__, "engine."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    found: dict[str, type[BaseException]] = {}
    pending: list[type[BaseException]] = [errors.EngineError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found[sub.__name__] = sub
            pending.append(sub)
    return found


def test_the_drawing_is_the_class_tree() -> None:
    classes = engine_error_classes()
    drawn = drawn_tree()
    assert set(drawn) == set(classes)
    for name, parent in drawn.items():
        bases = [b.__name__ for b in classes[name].__bases__]
        assert parent in bases, (name, parent, bases)


def test_every_error_of_engine_errors_is_exported_from_engine() -> None:
    for name in errors.__all__:
        assert getattr(engine, name, None) is getattr(errors, name), name
