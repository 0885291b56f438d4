"""inventory/schema.py is the fleet file's shape (settings, types, defaults, descriptions); the
checks behind its constrained values live apart, in inventory/validation.py."""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import BaseModel

from inventory import schema, validation

SCHEMA = Path(schema.__file__)


def test_the_schema_defines_no_check_of_its_own() -> None:
    tree = ast.parse(SCHEMA.read_text())
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    raises = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Raise)]
    assert functions == [] and raises == [], (functions, raises)


def test_every_check_the_schema_names_is_validations() -> None:
    checks = []
    for name, value in vars(schema).items():
        for meta in getattr(value, "__metadata__", ()):
            func = getattr(meta, "func", None)
            if func is not None:
                checks.append((name, func))
    assert len(checks) >= 19
    assert {func.__module__ for _, func in checks} == {validation.__name__}, checks
    # every model's own fields: no field or model validator defined on the shape
    models = [v for v in vars(schema).values()
              if isinstance(v, type) and issubclass(v, BaseModel) and v is not BaseModel]
    assert models
    for model in models:
        decorators = model.__pydantic_decorators__
        assert not decorators.field_validators and not decorators.model_validators, model
