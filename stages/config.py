"""The typed-YAML engine under the recipe schema: dataclass fields with docs, units and bounds (``knob``),
loading with file/line errors, dotted ``--set`` overrides, and sections that validate themselves.

Knows nothing of stages: stages/recipe.py declares the schema with it. A section (any dataclass in the
tree) may define ``check(self)`` yielding ``(key, message)`` for what no single field can say (a batch
that does not split into micro-batches, a model shape that cannot exist); every section is checked at
load, so a recipe that loads is one every stage can start on.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml


class RecipeError(ValueError):
    """A recipe that cannot run: names the file, line and key, and what is expected."""


def knob(default: Any = dataclasses.MISSING, doc: str = "", unit: str = "", min: float | None = None,
         max: float | None = None, factory: Any = None, above: float | None = None) -> Any:
    """A recipe field with its documentation and bounds kept next to the default (``above``: strictly greater)."""
    meta = {"doc": doc, "unit": unit, "min": min, "max": max, "above": above}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


Problems = Iterator[tuple[str, str]]  # what a section's check() yields: (key inside the section, message)


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Builder:
    """Builds a dataclass tree from YAML data, collecting the file/line of every key for errors."""

    def __init__(self, source: str, lines: dict[str, Any]):
        self.source, self.lines = source, lines

    def fail(self, key: str, message: str) -> typing.NoReturn:
        line = self.lines.get(key)
        if line == "override":
            where = f"{self.source} (overridden with --set)"
        else:
            where = f"{self.source}, line {line}" if line else self.source
        raise RecipeError(f"{where}: key '{key}': {message}")

    def build(self, cls: type, data: Any, prefix: str, base: Any = None) -> Any:
        """``cls`` from ``data``; keys not given keep the values of ``base`` (the field's own default),
        so `optim: {lr: 1e-6}` keeps the rest of a stage's paper schedule rather than generic defaults."""
        if not isinstance(data, dict):
            self.fail(prefix.rstrip(".") or "<top>", f"expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                hint = _hint(str(key), names, hints)
                self.fail(f"{prefix}{key}", f"unknown key{hint}; allowed: {', '.join(names)}")
        values = {}
        for name, f in names.items():
            if name in data:
                default = getattr(base, name) if base is not None else _field_default(f)
                values[name] = self.convert(hints[name], data[name], f"{prefix}{name}", f.metadata, default)
            elif base is not None:
                values[name] = copy.deepcopy(getattr(base, name))
        return cls(**values)

    def convert(self, tp: Any, value: Any, key: str, meta: Any = None, default: Any = None) -> Any:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key + ".", default if dataclasses.is_dataclass(default) else None)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, key, meta)
        if origin is Literal:
            if value not in typing.get_args(tp):
                self.fail(key, f"expected {_type_name(tp)}, got {value!r}")
            return value
        if origin is list:
            if not isinstance(value, list):
                self.fail(key, f"expected {_type_name(tp)}, got {type(value).__name__}")
            (item,) = typing.get_args(tp)
            return [self.convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(key, f"expected true or false, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
                try:
                    value = float(value)
                except ValueError:
                    self.fail(key, f"expected a number, got {value!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(key, f"expected a number, got {value!r}")
            value = float(value)
        elif tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"expected an integer, got {value!r}")
        elif tp is str:
            if not isinstance(value, str):
                self.fail(key, f"expected a string, got {value!r}")
        meta = meta or {}
        if tp is float and not math.isfinite(value):
            self.fail(key, f"expected a finite number, got {value}")
        if meta.get("above") is not None and value <= meta["above"]:
            self.fail(key, f"must be > {meta['above']}, got {value}")
        if meta.get("min") is not None and value < meta["min"]:
            self.fail(key, f"must be >= {meta['min']}, got {value}")
        if meta.get("max") is not None and value > meta["max"]:
            self.fail(key, f"must be <= {meta['max']}, got {value}")
        return value


    def check_tree(self, obj: Any, prefix: str = "") -> None:
        """Every section's own ``check()``, outermost first, each key prefixed with where the section sits."""
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                self.check_tree(item, f"{prefix[:-1]}[{i}].")
            return
        if not dataclasses.is_dataclass(obj):
            return
        for key, message in getattr(obj, "check", lambda: ())():
            self.fail(f"{prefix}{key}", message)
        for f in dataclasses.fields(obj):
            self.check_tree(getattr(obj, f.name), f"{prefix}{f.name}.")


def _hint(key: str, names: dict[str, dataclasses.Field], hints: dict[str, Any]) -> str:
    """A likely meant key: a close spelling, or the same key one section down (e.g. `train.epochs`)."""
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    nested = [name for name in names if dataclasses.is_dataclass(hints[name])
              and key in {f.name for f in dataclasses.fields(hints[name])}]
    return f" (did you mean '{nested[0]}.{key}'?)" if nested else ""


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted keys to 1-based YAML line numbers, so errors can point at the line."""
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[f"{prefix[:-1]}[{i}]"] = v.start_mark.line + 1
                walk(v, f"{prefix[:-1]}[{i}].")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return lines


def parse_override(item: str) -> tuple[list[str], Any]:
    """'sft.optim.lr=1e-5' -> (['sft', 'optim', 'lr'], 1e-05). Values are read as YAML."""
    if "=" not in item:
        raise RecipeError(f"override '{item}': expected KEY=VALUE with a dotted key, e.g. sft.optim.lr=1e-5")
    key, raw = item.split("=", 1)
    if not raw.strip():
        return key.strip().split("."), None
    try:
        value = _parse_yaml(raw)
    except _YAML_ERRORS as err:
        raise RecipeError(f"override '{item}': the value is not valid YAML ({_yaml_problem(err)}); quote a "
                          f"string that holds ':', '[' or '{{', e.g. {key}='\"a: b\"'") from err
    return key.strip().split("."), value


def _override_steps(item: str, path: list[str]) -> list[str | int]:
    """['sft', 'data[0]', 'n'] -> ['sft', 'data', 0, 'n']."""
    steps: list[str | int] = []
    for part in path:
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)", part)
        if not match:
            raise RecipeError(f"override '{item}': '{part}' is not a key (expected name or name[index])")
        steps.append(match.group(1))
        steps.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return steps


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        steps = _override_steps(item, path)
        node: Any = data
        for step, following in zip(steps[:-1], steps[1:]):
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    raise RecipeError(f"override '{item}': the recipe file has no item [{step}] there; "
                                      f"set the whole list instead, e.g. key=[{{...}}]")
                node = node[step]
                continue
            if not isinstance(node, dict):
                raise RecipeError(f"override '{item}': '{step}' is not inside a section")
            node = node.setdefault(step, [] if isinstance(following, int) else {})
        last = steps[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise RecipeError(f"override '{item}': the recipe file has no item [{last}] there")
        elif not isinstance(node, dict):
            where = f"'{steps[-2]}' is not a section" if len(steps) > 1 else "the recipe file is not a mapping"
            raise RecipeError(f"override '{item}': {where}")
        node[last] = value
    return data


def load(cls: type, path: str | Path, overrides: list[str] | None = None) -> Any:
    """``cls`` from a YAML file with dotted overrides on top, every section checked (RecipeError on the first
    problem)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text (byte {err.start}); save the recipe as UTF-8") from err
    except OSError as err:
        raise RecipeError(f"{path}: cannot read the recipe ({err.strerror}); pass an existing YAML file, "
                          f"e.g. recipes/tiny.yaml") from err
    try:
        data = _parse_yaml(text)
    except _YAML_ERRORS as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: not valid YAML: {_yaml_problem(err)}") from err
    data = apply_overrides({} if data is None else data, overrides or [])
    if data == {}:  # an empty file (or only comments) is a mistake, not a request for every default
        raise RecipeError(f"{path}: the recipe is empty; expected a mapping with the recipe's name and a section "
                          f"per stage (recipes/tiny.yaml is a short example)")
    lines: dict[str, Any] = dict(_key_lines(text))
    for item in overrides or []:
        lines[".".join(parse_override(item)[0])] = "override"
    return _build_checked(cls, data, str(path), lines)


def from_dict(cls: type, data: dict[str, Any], source: str = "<dict>") -> Any:
    """``cls`` from plain data, validated as a file would be."""
    return _build_checked(cls, data, source, {})


def _build_checked(cls: type, data: Any, source: str, lines: dict[str, Any]) -> Any:
    builder = _Builder(source, lines)
    built = builder.build(cls, data, "")
    builder.check_tree(built)
    return built


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, mark: Any):
        super().__init__(f"key {key!r} appears twice in one mapping (first on line {first_line}); YAML would "
                         f"silently keep only the last, so remove one")
        self.problem, self.problem_mark = str(self), mark


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives one key twice."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with << may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first_lines:
                    raise _DuplicateKey(key, first_lines[key], key_node.start_mark)
                first_lines[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
        return super().construct_mapping(node, deep)


# What reading YAML can raise besides YAMLError: a timestamp that is no date (ValueError), deep nesting.
_YAML_ERRORS = (yaml.YAMLError, ValueError, OverflowError, RecursionError)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _yaml_problem(err: BaseException) -> str:
    return str(getattr(err, "problem", None) or err)


def dump(obj: Any) -> str:
    """YAML of a loaded tree, fields in declaration order."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def describe(obj: Any, prefix: str = "") -> list[str]:
    """One line per knob of a loaded (or default) tree: key, value, unit and doc. Nested sections show the
    defaults their parent gives them (a stage's own training defaults), not their class's."""
    out = []
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.append(f"{key}: {f.metadata.get('doc', '')}")
            out.extend(describe(value, key + "."))
            continue
        unit = f" [{f.metadata['unit']}]" if f.metadata.get("unit") else ""
        out.append(f"{key} = {to_dict(value)!r}{unit}: {f.metadata.get('doc', '')}")
    return out
