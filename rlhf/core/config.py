"""Typed, frozen configs loaded from YAML with ``--key value`` CLI overrides.

Every config in the project is a frozen dataclass whose fields carry one line of documentation in
``field(metadata={"doc": ...})``. This module knows nothing about RLHF: it turns a YAML mapping plus CLI
overrides into such a dataclass, checking every key and every type, and raising :class:`ConfigError`
with the offending field's dotted name and a hint at the fix. Range checks live in each dataclass's
``__post_init__`` and raise the same error, so a bad value never reaches compute and no setting is ever
silently rewritten.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from rlhf.core.errors import InputError

T = TypeVar("T")


class ConfigError(InputError, ValueError):
    """A config value is unknown, of the wrong type, or out of range. The message names the field."""


def doc_field(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its one-line documentation attached (shown by :func:`describe`)."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def check(condition: bool, name: str, message: str) -> None:
    """Raise a :class:`ConfigError` naming field ``name`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"config field '{name}': {message}")


# ----------------------------------------------------------------------------------------------------------
# Type checking and conversion of one value
# ----------------------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class Repeated(list):
    """The values of a ``--key`` given several times: a list field takes them all, any other field the last."""


def _is_sequence_type(tp: Any) -> bool:
    arms = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
        typing.Union, types.UnionType) else [tp]
    return any(typing.get_origin(a) in (tuple, list, Sequence, typing.Sequence) or a in (tuple, list) for a in arms)


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it converted (lists -> tuples, dicts -> dataclasses)."""
    if isinstance(value, Repeated):
        if _is_sequence_type(tp):
            value = list(value)
        else:  # --max_steps 40 ... --max_steps 2: the last one wins, as in argparse, and the run says so
            import warnings

            warnings.warn(f"--{name} given {len(value)} times ({', '.join(map(repr, value))}): using the last, "
                          f"{value[-1]!r}")
            value = value[-1]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own, more precise error
            return _convert(value, arms[0], name)
        for arm in arms:
            try:
                return _convert(value, arm, name)
            except ConfigError:
                continue
        raise ConfigError(f"config field '{name}': expected one of {[_type_name(a) for a in args]}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config field '{name}': must be one of {list(args)}, got {value!r}")
        return value
    registry = getattr(tp, "REGISTRY", None) if dataclasses.is_dataclass(tp) else None
    if registry is not None and registry.base is tp:  # a plug-in point: the block names its variant
        return registry.parse(value, name)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config field '{name}': expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=name + ".")
    if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
        if isinstance(value, str) and "," in value:  # CLI convenience: --fixed 0.3,0.7
            value = [yaml.safe_load(v) for v in value.split(",")]
        variadic = origin is tuple and len(args) == 2 and args[1] is Ellipsis
        if variadic and args[0] is str and isinstance(value, str):  # --run A: a list of one
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{name}': expected a list, got {value!r}")
        if variadic:
            return tuple(_convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"config field '{name}': expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        return tuple(_convert(v, inner, f"{name}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config field '{name}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{name}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field '{name}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _looks_like_float(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads 1e-3 as a string; as a number field it is 0.001
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{name}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off/true/false as booleans
            raise ConfigError(f"config field '{name}': expected a string, got the boolean {value!r} (YAML reads "
                              f"yes/no/on/off/true/false as booleans): quote it, e.g. '{str(value).lower()}'")
        if not isinstance(value, str):
            raise ConfigError(f"config field '{name}': expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config field '{name}': expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        what = f"{cls.REGISTRY.point} {cls.NAME!r}" if getattr(cls, "NAME", "") else cls.__name__
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]} for {what}; "
            f"valid keys: {sorted(prefix + k for k in fields)}"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    missing = [k for k, f in fields.items() if k not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config field(s) {[prefix + k for k in missing]} are required and have no default")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        named = re.match(r"config field '([^']*)'", str(err))
        if prefix and named and not named.group(1).startswith(prefix):  # qualify with the parent path, once
            msg = str(err).replace("config field '", f"config field '{prefix}", 1)
            raise ConfigError(msg) from None
        raise


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        registry = getattr(v, "REGISTRY", None)
        return registry.dump(v) if registry is not None else to_dict_fields(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def to_dict_fields(cfg: Any) -> dict[str, Any]:
    """A dataclass's own fields as plain values (a plug-in block's name is added by its registry)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a config (tuples become lists; a plug-in block starts with its name), which
    ``from_dict`` reads back into the same config."""
    return _plain(cfg)


# ----------------------------------------------------------------------------------------------------------
# YAML + CLI
# ----------------------------------------------------------------------------------------------------------

def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``["--a.b", "3", "--flag", "--c=x"]`` -> ``{"a": {"b": 3}, "flag": True, "c": "x"}``.

    Values are parsed as YAML scalars/lists so that ``--fixed [0.3,0.7]`` and ``--lr 1e-4`` work.
    """
    out: dict[str, Any] = {}
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}: overrides are written --key value or --key=value")
        key = tok[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw = argv[i + 1]
            i += 2
        else:
            raw = "true"
            i += 1
        value = yaml.safe_load(raw) if raw != "" else ""
        if isinstance(value, float) is False and isinstance(raw, str) and _looks_like_float(raw):
            value = float(raw)  # YAML 1.1 reads "1e-4" as a string
        node = out
        parts = key.replace("-", "_").split(".")
        for p in parts[:-1]:
            if p in node and isinstance(node[p], (str, int, float)) and not isinstance(node[p], bool):
                node[p] = {"name": node[p]}  # --aggregation tche --aggregation.ideal_margin 0.2: the short form
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key} conflicts with an earlier override of '{p}'")
        if parts[-1] in node and key in seen:  # a repeated --key: --run A --run B (a scalar field takes the last)
            prev = node[parts[-1]]
            node[parts[-1]] = Repeated((prev if isinstance(prev, Repeated) else [prev]) + [value])
        else:
            node[parts[-1]] = value
        seen.add(key)
    return out


def _looks_like_float(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return any(c in raw for c in ".eE") and raw.lower() not in {"nan", "inf", "-inf", "infinity"}


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (override wins)."""
    merged = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = deep_merge(dict(merged[k]), v)
        else:
            merged[k] = v
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"config key {key!r} appears twice in one mapping (lines {seen[key]} and "
                              f"{key_node.start_mark.line + 1}); keep one")
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (optional) and apply ``--key value`` overrides on top."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass --config PATH to a YAML file")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raw = path.read_bytes()
            line = raw[:err.start].count(b"\n") + 1
            raise ConfigError(f"config file {str(path)!r} line {line} is not UTF-8 (byte {raw[err.start]:#04x}); "
                              f"save it as UTF-8") from None
        try:
            loaded = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"config file {str(path)!r}{where}: YAML syntax error: {problem}") from None
        except ConfigError as err:
            raise ConfigError(f"config file {str(path)!r}: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a YAML mapping of fields, got {type(loaded).__name__}")
        data = loaded
    overrides = parse_overrides(list(overrides))
    data = deep_merge(switch_variants(data, overrides), overrides)
    return from_dict(cls, data)


def switch_variants(data: dict[str, Any], overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A plug-in block whose variant an override changes (``--preference.name fixed`` on a file's ``preference:
    {name: dirichlet, vertex_prob: 0.15}``) starts afresh from the overrides: the file's keys belong to the other
    variant and are dropped, with a warning naming them (merged, they would be refused as unknown to the new one)."""
    out = dict(data)
    for key, value in overrides.items():
        node = out.get(key)
        if not isinstance(value, Mapping) or not isinstance(node, Mapping):
            continue
        path = f"{prefix}{key}"
        if "name" in value and node.get("name", value["name"]) != value["name"]:
            dropped = sorted(k for k in node if k != "name")
            if dropped:
                warnings.warn(f"--{path}.name {value['name']} replaces the config file's {path} block (variant "
                              f"{node['name']!r}): its keys {dropped} are dropped; set the new variant's fields with "
                              f"--{path}.<field>")
            out[key] = {}
        else:
            out[key] = switch_variants(dict(node), value, path + ".")
    return out


def split_config_arg(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config PATH`` (and DeepSpeed's ``--local_rank``) out of argv; return (path, overrides)."""
    path, rest, i = None, [], 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if tok == "--config" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
        elif tok.startswith("--config="):
            path, i = tok.split("=", 1)[1], i + 1
        elif tok.startswith("--local_rank") or tok.startswith("--local-rank"):
            i += 1 if "=" in tok else 2  # the deepspeed launcher adds it; LOCAL_RANK env carries the same value
        else:
            rest.append(tok)
            i += 1
    return path, rest


def _doc_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().split("\n")[0]


def _describe_point(registry: Any, prefix: str, doc: str) -> str:
    """A plug-in point's block: its variants, each with its own fields."""
    base = registry.base
    if registry.key is not None:
        lines = [f"{prefix}:  (one of {registry.names()}, default {registry.default!r}; short form `{prefix}: NAME`) "
                 f"{doc}"]
        for name in registry.names():
            cls = registry.entries[name]
            lines.append(f"{prefix} = {{{registry.key}: {name}}}: {_doc_line(cls)}")
            sub = describe(cls, prefix + ".")
            if sub:
                lines.append(sub)
        return "\n".join(lines)
    lines = [f"{prefix}:  ({doc}) common fields:", describe(base, prefix + ".")]
    own = {f.name for f in dataclasses.fields(base)}
    for name in registry.names():
        cls = registry.entries[name]
        lines.append(f"{prefix} with `{name}:` ({registry.point}): {_doc_line(cls)}")
        lines += [line for line in describe(cls, prefix + ".").split("\n")
                  if line.split(":")[0][len(prefix) + 1:] not in own]
    return "\n".join(lines)


def describe(cls: type, prefix: str = "") -> str:
    """Human-readable list of every field with its type, default and documentation (for ``--help``)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        doc = f.metadata.get('doc', '')
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        registry = getattr(tp, "REGISTRY", None) if dataclasses.is_dataclass(tp) else None
        if registry is not None and registry.base is tp:
            lines.append(_describe_point(registry, prefix + f.name, doc))
            continue
        item = arms[0] if typing.get_origin(tp) is tuple and arms and dataclasses.is_dataclass(arms[0]) else None
        if item is not None:
            registry = getattr(item, "REGISTRY", None)
            if registry is not None and registry.base is item:
                lines.append(_describe_point(registry, f"{prefix}{f.name}[]", doc))
            else:
                lines.append(f"{prefix}{f.name}:  (list of {item.__name__}) {doc}")
                lines.append(describe(item, prefix + f.name + "[]."))
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(arms) == 1 and dataclasses.is_dataclass(
                arms[0]):
            lines.append(f"{prefix}{f.name}:  (optional {arms[0].__name__}, null: none) {doc}")
            lines.append(describe(arms[0], prefix + f.name + "."))
            continue
        if dataclasses.is_dataclass(tp):
            lines.append(f"{prefix}{f.name}:  ({tp.__name__}) {doc}")
            lines.append(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            "<required>" if f.default_factory is dataclasses.MISSING else f.default_factory())
        lines.append(f"{prefix}{f.name}: {_type_name(tp)} = {default!r}  # {doc}")
    return "\n".join(line for line in lines if line)
