"""The one shape of every plug-in point (advantage estimator, aggregation, generation backend, preference sampler,
objective source).

A variant is a frozen config dataclass registered under a name. The class *is* the registry entry: its fields are
the variant's config block (``advantage: {name: group, group_size: 4}``; the short form ``advantage: group`` means
``{name: group}``), its ``ClassVar`` capabilities say what it needs and supports (``NEEDS_CRITIC``,
``ZERO_STAGES``, ...), ``check(run_cfg, path)`` validates it against the whole run config (run at load time, so
``--dry_run`` catches it), and ``build(...)`` returns an object with its settings bound that callers use through
the point's narrow protocol. Trainers and configs never test a variant's name: they read capabilities and call the
protocol. Adding a variant is one class (in one source file) plus its tests.

Two ways to pick a variant:
- by a ``name`` key (every point but one): ``{name: tche, ideal_margin: 0.2}``;
- by which key is present (``key=None``; objective sources): ``{name: helpful, model: PATH}`` picks the ``model``
  entry, ``{name: concise, function: pkg.mod:fn}`` the ``function`` entry; a mapping naming none is the base class.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Generic, Iterator, Mapping, Optional, TypeVar

T = TypeVar("T")


class Plugin:
    """Mixed into the base config class of a plug-in point. Subclasses are frozen dataclasses (the variants)."""

    NAME: ClassVar[str] = ""                  # the registry name of this variant (set by ``Registry.register``)
    REGISTRY: ClassVar[Optional["Registry"]] = None  # the point this class belongs to (set on the base class)
    ZERO_STAGES: ClassVar[tuple[int, ...]] = (0, 1, 2, 3)  # ZeRO stages the variant works under

    def check(self, run_cfg: Any, path: str) -> None:
        """Validate this block against the whole run config; raise ``ConfigError`` naming ``path.<field>``."""


class Registry(Generic[T]):
    """Name -> variant class for one plug-in point; parses its config block (used by ``rlhf.core.config``)."""

    def __init__(self, point: str, base: type, default: Optional[str], key: Optional[str] = "name",
                 short: str = "name") -> None:
        """``key``: the field naming the variant (None: the variant is the registered key the mapping holds);
        ``short``: the field a bare scalar fills (``aggregation: tche`` = ``{name: tche}``)."""
        self.point, self.base, self.default, self.key, self.short = point, base, default, key, short
        self.entries: dict[str, type] = {}
        base.REGISTRY = self

    def register(self, name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            if name in self.entries:
                raise ValueError(f"{self.point} {name!r} is registered twice")
            cls.NAME = name
            self.entries[name] = cls
            return cls
        return add

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: Any, field: str = "") -> type:
        """The variant class called ``name``; a ``ConfigError`` naming ``field`` and the choices otherwise."""
        from rlhf.core.config import ConfigError

        if name not in self.entries:
            where = f"config field '{field}'" if field else self.point
            raise ConfigError(f"{where}: unknown {self.point} {name!r}; must be one of {self.names()}")
        return self.entries[name]

    def make(self, name: str, **fields: Any) -> Any:
        """A variant's config block from keyword fields, checked like one read from YAML."""
        from rlhf.core.config import from_dict

        return from_dict(self.get(name), fields)

    def default_block(self) -> Any:
        return self.entries[self.default]() if self.default is not None else self.base()

    def parse(self, value: Any, field: str) -> Any:
        """A config block from YAML/CLI: a variant instance, a short-form name, or a mapping."""
        from rlhf.core.config import ConfigError, from_dict

        if isinstance(value, self.base):
            return value
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = {self.short: value}  # the short form: `aggregation: tche`, `- helpful`
        if self.key is None:  # picked by which registered key the mapping holds
            if not isinstance(value, Mapping):
                raise ConfigError(f"config field '{field}': expected a mapping, got {value!r}")
            present = [k for k in self.entries if k in value]
            if len(present) > 1:
                raise ConfigError(f"config field '{field}': names {len(present)} {self.point}s {present}; give "
                                  f"exactly one of {self.names()}")
            cls = self.entries[present[0]] if present else self.base
            return from_dict(cls, value, prefix=field + ".")
        if not isinstance(value, Mapping):
            raise ConfigError(f"config field '{field}': expected a {self.point} name or a mapping with "
                              f"'{self.key}', got {value!r}")
        value = dict(value)
        name = value.pop(self.key, self.default)
        if name is None:
            raise ConfigError(f"config field '{field}.{self.key}': is required, one of {self.names()}")
        return from_dict(self.get(name, f"{field}.{self.key}"), value, prefix=field + ".")

    def dump(self, block: Any) -> dict[str, Any]:
        """What ``to_dict`` writes for a block: the name first (name-keyed points), then the fields."""
        from rlhf.core.config import to_dict_fields

        fields = to_dict_fields(block)
        return {self.key: block.NAME, **fields} if self.key is not None else fields


def plugins(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Plugin]]:
    """Every plug-in block inside a config tree, with its dotted path (``advantage``, ``objectives[1]``, ...)."""
    if not dataclasses.is_dataclass(cfg):
        return
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{prefix}{f.name}"
        items = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
        for i, item in items:
            p = path if i is None else f"{path}[{i}]"
            if isinstance(item, Plugin):
                yield p, item
            if dataclasses.is_dataclass(item):
                yield from plugins(item, p + ".")


def check_plugins(run_cfg: Any) -> None:
    """Each plug-in block's own ``check`` against the whole run config (called once the config is built)."""
    for path, block in plugins(run_cfg):
        block.check(run_cfg, path)


def check_zero_stage(run_cfg: Any, stage: int, ds_config: str) -> None:
    """Refuse, naming the field, any plug-in block that does not work under ZeRO stage ``stage``."""
    from rlhf.core.config import check

    for path, block in plugins(run_cfg):
        ok = block.ZERO_STAGES
        span = f"{ok[0]}-{ok[-1]}" if list(ok) == list(range(ok[0], ok[-1] + 1)) else "/".join(map(str, ok))
        check(stage in ok, path, f"{block.NAME!r} needs ZeRO stage {span} ({ds_config} is stage {stage})")
