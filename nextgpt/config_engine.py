"""A small engine for typed, strictly checked dataclass configs (what :mod:`nextgpt.config` declares with).

It knows nothing of nextgpt's config classes; a config tree is a set of dataclasses deriving from
:class:`Node`, and this module gives them:

* **Type checking and coercion against the annotations**, whenever a node is built (from YAML, a
  dict, overrides or Python): ``bool``, ``int``, ``float`` (also from YAML 1.1 strings such as
  ``"4e-4"``), ``str`` (also from ``os.PathLike``), ``Literal[...]`` (the choices are listed in the
  error), ``X | None`` and unions of these, ``list[X]``, ``dict[K, X]`` with ``str``, ``int`` or
  :class:`~enum.Enum` keys (an enum with a ``parse`` classmethod uses it, e.g. for
  case-insensitive names), nested :class:`Node` dataclasses and ``Any``. Any other annotation is a
  bug in the declaring module and raises :class:`TypeError`.
* **Tagged unions** (:func:`tagged_union`): a union of node classes that each declare the same
  field as a one-value ``Literal`` (``kind: Literal["oak"] = "oak"``) is built as the class that
  field's value names; an unknown value lists the valid ones, and a key of another class of the
  union is reported as not used by this one. Dotted overrides go into the class the data's tag names.
* **Errors that name the dotted key** (``model.llm.lora.r``, ``depths[1]``): every
  :class:`~nextgpt.errors.ConfigError` made by :func:`error` carries ``key`` and ``detail``
  attributes; a node raises with keys relative to itself and :func:`build` prefixes them on the
  way out. Unknown keys list the valid ones and suggest the closest (:func:`unknown_key`).
* **Cross-field checks and derived values** in :meth:`Node._validate` (after coercion), with the
  helpers :func:`check` and :func:`positive`.
* **Path references**: fields declared with ``metadata=PATH_METADATA`` may hold
  ``${env:NAME}`` (an environment variable) and ``${pkg:name}`` (the install directory of a
  package, found without importing it). Their syntax is checked when the node is built, the value is
  stored verbatim, and :func:`resolve_path` expands it where the path is used.
* **Strict YAML** (:class:`StrictLoader`: a safe loader that rejects duplicate keys) and
  **dotted overrides** (:func:`apply_overrides`, :func:`set_dotted`: ``a.b.c=value`` strings or a
  mapping, checked part by part against the types; dict entries are addressed by their key).

Why it is hand-written: OmegaConf structured configs (OmegaConf is what torchtune and Hydra build
on) were considered and tried (OmegaConf 2.4.0, outside this project's environment). They would
change behaviour that nextgpt's tests and users rely on: OmegaConf converts leniently (``enabled=1``
becomes ``True``, a list item ``3`` in a ``list[str]`` becomes ``"3"``) where this engine rejects;
its errors are multi-line (``Key 'lorra' not in 'LLMConfig'. Did you mean: 'lora'?`` followed by
``full_key``/``reference_type``/``object_type`` lines) and do not list the valid keys; checks in
``__post_init__`` run only in ``OmegaConf.to_object`` and their errors carry no dotted key; and
``${env:..}``/``${pkg:..}`` are OmegaConf interpolations, resolved (and failing when a variable is
unset) on conversion, whereas nextgpt keeps them verbatim until a path is actually used, so that a
7B preset loads and round-trips on a machine without those weights. Keeping the existing messages
would mean translating every OmegaConf exception and re-checking the values ourselves, i.e. keeping
most of this module plus a new dependency; the engine is about 510 lines of code (standard library
and PyYAML), and one file of that size on purpose: its parts call each other (coercion builds nodes,
overrides coerce keys, nodes check their path references), so a split would only add imports.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib.util
import os
import re
import types
import typing
from collections.abc import Hashable, Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from nextgpt.errors import ConfigError

__all__ = [
    "PATH_METADATA",
    "Node",
    "StrictLoader",
    "apply_overrides",
    "build",
    "check",
    "choices",
    "coerce",
    "coerce_key",
    "describe",
    "error",
    "hints",
    "init_fields",
    "is_union",
    "join",
    "key_text",
    "load_yaml",
    "load_yaml_file",
    "load_yaml_text",
    "package_dir",
    "parse_overrides",
    "parse_refs",
    "plain",
    "positive",
    "prefixed",
    "resolve_path",
    "set_dotted",
    "show",
    "strip_optional",
    "tagged_union",
    "unknown_key",
]

N = TypeVar("N", bound="Node")

#: Field metadata marking a path value that may hold ``${env:..}``/``${pkg:..}`` references.
PATH_METADATA: Mapping[str, Any] = types.MappingProxyType({"path": True})


# --------------------------------------------------------------------------------------------
# Errors with dotted keys
# --------------------------------------------------------------------------------------------


def error(key: str, detail: str) -> ConfigError:
    """A ConfigError for ``key`` (dotted, relative to the node that raises it until prefixed).

    The message is ``"key: detail"`` (just ``detail`` when ``key`` is empty); both parts are kept
    as the ``key`` and ``detail`` attributes so that :func:`prefixed` can re-root them.
    """
    err = ConfigError(f"{key}: {detail}" if key else detail)
    err.key = key  # type: ignore[attr-defined]
    err.detail = detail  # type: ignore[attr-defined]
    return err


def join(prefix: str, key: str) -> str:
    """Join two dotted keys (``a`` + ``b`` = ``a.b``; ``a`` + ``[0]`` = ``a[0]``; empty parts drop)."""
    if not prefix:
        return key
    if not key:
        return prefix
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"


def prefixed(err: ConfigError, prefix: str) -> ConfigError:
    """``err`` with its key put under ``prefix`` (an error without a key gets ``prefix`` as key)."""
    key = getattr(err, "key", None)
    if key is None:  # a ConfigError raised by code that knows no key (e.g. an enum's parse)
        return error(prefix, str(err))
    return error(join(prefix, key), err.detail)  # type: ignore[attr-defined]


def choices(values: Iterable[Any]) -> str:
    """``values`` as a comma-separated list for messages."""
    return ", ".join(str(v) for v in values)


def unknown_key(key: str, name: str, valid: list[str]) -> ConfigError:
    """The error for an unknown key ``name`` (full dotted ``key``): the valid keys and the closest."""
    detail = f"unknown key; valid keys: {choices(valid)}"
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        detail += f" (did you mean {close[0]!r}?)"
    return error(key, detail)


def show(value: Any) -> str:
    """A value with its type for messages (``int 3``, ``str 'abc'``, ``null``)."""
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------------------------
# Type coercion against annotations
# --------------------------------------------------------------------------------------------


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls`` (cached)."""
    return typing.get_type_hints(cls)


def init_fields(cls: type) -> list[dataclasses.Field]:
    """The dataclass fields of ``cls`` that are set from data (``init=True``), in order."""
    return [f for f in dataclasses.fields(cls) if f.init]


def is_union(tp: Any) -> bool:
    """Whether ``tp`` is a union (``X | Y`` or ``Optional[X]``)."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def describe(tp: Any) -> str:
    """An annotation in words for messages (``an integer``, ``one of a, b``, ``a mapping``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if is_union(tp):
        return " or ".join(dict.fromkeys(describe(a) for a in args))  # each wording once
    if origin is Literal:
        return "one of " + choices(args)
    if origin is list:
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], 'items')}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def key_text(key: Any) -> str:
    """A mapping key as text (an enum member by its value)."""
    return key.value if isinstance(key, Enum) else str(key)


def _parse_enum(tp: type[Enum], raw: Any) -> Enum:
    parse = getattr(tp, "parse", None)
    if parse is not None:
        return parse(raw)
    return raw if isinstance(raw, tp) else tp(raw)


def coerce_key(raw: Any, tp: Any, key: str) -> Any:
    """Coerce a mapping key to the key annotation ``tp`` (``key`` is the mapping's dotted key).

    Enum keys are parsed with the enum's ``parse`` classmethod when it has one (else by value);
    ``int`` keys also accept their decimal spelling (YAML and dotted overrides give ``"2"``).
    """
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return _parse_enum(tp, raw)
        except ValueError:  # ConfigError is a ValueError too
            valid = choices(m.value for m in tp)
            raise error(join(key, str(raw)), f"unknown {tp.__name__.lower()}; valid: {valid}") from None
    if tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
            return int(raw)
        raise error(join(key, str(raw)), "expected an integer key")
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise error(join(key, str(raw)), "expected a string key")
    raise TypeError(f"unsupported mapping key annotation {tp!r}")  # a bug in the declaring module


_NO_TAG = object()


def _tag_value(cls: type, name: str) -> Any:
    """The value of field ``name`` of ``cls`` when it is declared as a one-value ``Literal``."""
    if name not in {f.name for f in init_fields(cls)}:
        return _NO_TAG
    tp = hints(cls)[name]
    args = typing.get_args(tp)
    return args[0] if typing.get_origin(tp) is Literal and len(args) == 1 else _NO_TAG


@functools.cache
def tagged_union(tp: Any) -> tuple[str, dict[Any, type[Node]]] | None:
    """``(tag, {tag value: class})`` when ``tp`` is a tagged union, else ``None``.

    A tagged union is a union (a ``None`` arm aside) of two or more :class:`Node` dataclasses that
    each declare one field, the tag, as a one-value ``Literal``, with distinct values (e.g.
    ``kind: Literal["oak"] = "oak"`` and ``kind: Literal["pine"] = "pine"``). The tag is the first
    such field of the first class; the mapping keeps the union's order (the order of messages).
    """
    if not is_union(tp):
        return None
    arms = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(arms) < 2 or not all(
        isinstance(a, type) and issubclass(a, Node) and dataclasses.is_dataclass(a) for a in arms
    ):
        return None
    for f in init_fields(arms[0]):
        values = [_tag_value(arm, f.name) for arm in arms]
        if all(v is not _NO_TAG for v in values) and len(set(values)) == len(values):
            return f.name, dict(zip(values, arms))
    return None


def _literal(value: Any, options: tuple[Any, ...], key: str) -> Any:
    """The option equal to ``value`` (same type); the error lists the options (``kind`` keys: kinds)."""
    for choice in options:
        if type(value) is type(choice) and value == choice:
            return choice
    word = "kind" if key.rsplit(".", 1)[-1] == "kind" else "value"
    raise error(key, f"unknown {word} {value!r}; valid {word}s: {choices(options)}")


def _variant(union: tuple[str, dict[Any, type[Node]]], data: Mapping[str, Any], key: str) -> type[Node]:
    """The class of a tagged union that the tag in ``data`` (the union's value at ``key``) names."""
    tag, arms = union
    sub = join(key, tag)
    if tag not in data:
        raise error(sub, "required key is missing")
    if data[tag] is None:
        raise error(sub, f"expected one of {choices(arms)}, got null")
    return arms[_literal(data[tag], tuple(arms), sub)]


def _foreign_key(union: tuple[str, dict[Any, type[Node]]], cls: type, name: str, key: str) -> ConfigError:
    """The error for a key ``name`` (full dotted ``key``) that ``cls``, a class of a tagged union,
    does not have: "not used by" it when another class of the union has it, else :func:`unknown_key`."""
    names = [f.name for f in init_fields(cls)]
    users = [v for v, arm in union[1].items() if name in {f.name for f in init_fields(arm)}]
    if not users:
        return unknown_key(key, name, names)
    value = next(v for v, arm in union[1].items() if arm is cls)
    return error(
        key,
        f"is not used by {value} (only by {choices(users)}); valid keys for {value}: {choices(names)}; "
        "remove it",
    )


def _coerce_tagged(value: Any, union: tuple[str, dict[Any, type[Node]]], key: str) -> Node:
    """Build the class of a tagged union that ``value`` (a mapping or an instance) is."""
    tag, arms = union
    if isinstance(value, Node) and isinstance(value, tuple(arms.values())):
        return build(type(value), value, key)
    if not isinstance(value, Mapping):
        raise error(
            key, f"expected a mapping (a section chosen by {tag}: {choices(arms)}), got {show(value)}"
        )
    cls = _variant(union, value, key)
    names = [f.name for f in init_fields(cls)]
    for name in value:
        if isinstance(name, str) and name not in names:
            raise _foreign_key(union, cls, name, join(key, name))
    return build(cls, value, key)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted; ConfigError if bad."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if is_union(tp):
        if value is None:
            if type(None) in args:
                return None
            raise error(key, f"expected {describe(tp)}, got null")
        union = tagged_union(tp)
        if union is not None:
            return _coerce_tagged(value, union, key)
        arms = [a for a in args if a is not type(None)]
        errors: list[ConfigError] = []
        for arm in arms:
            try:
                return coerce(value, arm, key)
            except ConfigError as err:
                errors.append(err)
        if len(arms) == 1:
            raise errors[0]
        raise error(key, f"expected {describe(tp)}, got {show(value)}")
    if value is None:
        raise error(key, f"expected {describe(tp)}, got null")
    if origin is Literal:
        return _literal(value, args, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise error(key, f"expected true or false, got {show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise error(key, f"expected an integer, got {show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "4e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise error(key, f"expected a number, got {show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise error(key, f"expected a string, got {show(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise error(key, f"expected {describe(tp)}, got {show(value)}")
        return [coerce(v, args[0], join(key, f"[{i}]")) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise error(key, f"expected a mapping, got {show(value)}")
        key_tp, value_tp = args
        out: dict[Any, Any] = {}
        for raw_key, raw_value in value.items():
            k = coerce_key(raw_key, key_tp, key)
            sub = join(key, key_text(k))
            if k in out:
                raise error(sub, "given twice")
            out[k] = coerce(raw_value, value_tp, sub)
        return out
    if isinstance(tp, type) and issubclass(tp, Node):
        return build(tp, value, key)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in the declaring module


def build(cls: type[N], data: Any, key: str) -> N:
    """Build (or re-check a copy of) a config node; errors carry ``key``-prefixed dotted keys.

    ``data`` is a mapping of field names (unknown names and missing required fields are errors) or
    an instance of ``cls``, which is deep-copied and re-checked.
    """
    if isinstance(data, cls):
        node = copy.deepcopy(data)
        try:
            node.__post_init__()
        except ConfigError as err:
            raise prefixed(err, key) from None
        return node
    if not isinstance(data, Mapping):
        raise error(key, f"expected a mapping (section {cls.__name__}), got {show(data)}")
    fields = init_fields(cls)
    names = [f.name for f in fields]
    for name in data:
        if not isinstance(name, str) or name not in names:
            raise unknown_key(join(key, str(name)), str(name), names)
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data:
            raise error(join(key, f.name), "required key is missing")
    try:
        return cls(**data)
    except ConfigError as err:
        raise prefixed(err, key) from None


def plain(value: Any) -> Any:
    """``value`` as plain, YAML-able data: nodes via ``to_dict``, enums by value, tuples as lists."""
    if isinstance(value, Node):
        return value.to_dict()
    if isinstance(value, dict):
        return {(key_text(k) if isinstance(k, Enum) else k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


# --------------------------------------------------------------------------------------------
# ${env:..} / ${pkg:..} references in path values
# --------------------------------------------------------------------------------------------

_REF = re.compile(r"\$\{([^{}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PKG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def parse_refs(value: str, key: str) -> list[tuple[str, str, str]]:
    """Return ``(text, scheme, name)`` for each ``${scheme:name}`` in ``value``; check the syntax."""
    refs = []
    for match in _REF.finditer(value):
        scheme, _, name = match.group(1).partition(":")
        scheme, name = scheme.strip(), name.strip()
        if scheme == "env" and _ENV_NAME.match(name):
            refs.append((match.group(0), scheme, name))
        elif scheme == "pkg" and _PKG_NAME.match(name):
            refs.append((match.group(0), scheme, name))
        elif scheme in ("env", "pkg"):
            raise error(key, f"bad name in {match.group(0)!r}: expected ${{{scheme}:NAME}}")
        else:
            raise error(
                key,
                f"unknown reference {match.group(0)!r}; valid forms: ${{env:VARIABLE}}, ${{pkg:package}}",
            )
    if "${" in _REF.sub("", value):
        raise error(key, f"unterminated '${{' in {value!r}")
    return refs


def package_dir(name: str, key: str, install_hints: Mapping[str, str] | None = None) -> str:
    """The install directory of package ``name``, found without importing it.

    ``install_hints`` maps package names to what to tell the user when one is missing (default: "install
    the package that provides it").
    """
    try:
        spec = importlib.util.find_spec(name)  # finds the package without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        hint = (install_hints or {}).get(name, "install the package that provides it")
        raise error(
            key, f"package {name} is not installed (needed for ${{pkg:{name}}}); {hint} or override {key}=..."
        )
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    if spec.has_location and spec.origin and os.path.isfile(spec.origin):
        return os.path.dirname(spec.origin)
    raise error(key, f"package {name} has no location on disk (needed for ${{pkg:{name}}})")


def resolve_path(
    value: str | os.PathLike | None,
    key: str,
    *,
    must_exist: bool = False,
    env_hints: Mapping[str, str] | None = None,
    pkg_hints: Mapping[str, str] | None = None,
) -> Path | None:
    """Expand a config path value into a real path.

    ``${env:NAME}`` is replaced by the environment variable ``NAME``, ``${pkg:name}`` by the install
    directory of package ``name`` (located with :func:`importlib.util.find_spec`, not imported), and a
    leading ``~`` by the home directory. ``None`` stays ``None``.

    Args:
        value: the stored config value.
        key: the dotted config key it came from, used in error messages.
        must_exist: also raise if the expanded path does not exist.
        env_hints: what each environment variable should point to, for the message when it is unset
            (default: "the local path").
        pkg_hints: how to get each package, for the message when it is missing.

    Raises:
        ConfigError: naming ``key`` and the environment variable or package when one is unset or
            missing, when a reference is malformed, or (``must_exist``) when the path is absent.
    """
    if value is None:
        return None
    text = os.fspath(value)
    for ref, scheme, name in parse_refs(text, key):
        if scheme == "env":
            resolved = os.environ.get(name)
            if not resolved:
                hint = (env_hints or {}).get(name, "the local path")
                raise error(
                    key, f"environment variable {name} is not set; set it to {hint} or override {key}=..."
                )
        else:
            resolved = package_dir(name, key, pkg_hints)
        text = text.replace(ref, resolved)
    path = Path(os.path.expanduser(text))
    if must_exist and not path.exists():
        source = f" (from {os.fspath(value)!r})" if text != os.fspath(value) else ""
        raise error(key, f"{path} does not exist{source}")
    return path


# --------------------------------------------------------------------------------------------
# Base node
# --------------------------------------------------------------------------------------------


def check(ok: bool, key: str, detail: str) -> None:
    """Raise :func:`error` ``(key, detail)`` unless ``ok``."""
    if not ok:
        raise error(key, detail)


def positive(node: Any, *names: str) -> None:
    """Check that each named attribute of ``node`` is > 0."""
    for name in names:
        value = getattr(node, name)
        check(value > 0, name, f"must be positive, got {value}")


class Node:
    """Shared behaviour of config dataclasses: coercion, validation, dict conversion.

    Subclasses are dataclasses; ``__post_init__`` coerces every ``init`` field to its annotation,
    checks the syntax of path references, then calls :meth:`_validate`.
    """

    def __post_init__(self) -> None:
        annotations = hints(typing.cast(type, type(self)))  # a class is hashable; mypy sees a dataclass
        for f in init_fields(type(self)):
            value = coerce(getattr(self, f.name), annotations[f.name], f.name)
            if f.metadata.get("path") and value is not None:
                parse_refs(value, f.name)
            setattr(self, f.name, value)
        self._validate()

    def _validate(self) -> None:
        """Check cross-field constraints and set derived values (keys relative to this node)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build this node from plain data; unknown keys and bad values raise ``ConfigError``."""
        return build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-able data (derived values left out): ``from_dict(to_dict())`` is equal."""
        return {f.name: plain(getattr(self, f.name)) for f in init_fields(type(self))}


# --------------------------------------------------------------------------------------------
# Strict YAML
# --------------------------------------------------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_strict_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_strict_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` with :class:`StrictLoader`; ConfigError ``"{source}: invalid YAML: ..."``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply to parse") from None


def load_yaml_text(cls: type[N], text: str, source: str) -> N:
    """Build a ``cls`` tree from YAML ``text``; errors end with ``(in {source})``."""
    data = load_yaml(text, source)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {show(data)}")
    try:
        return cls.from_dict(data)
    except ConfigError as err:
        new = ConfigError(f"{err} (in {source})")
        new.key, new.detail = getattr(err, "key", ""), getattr(err, "detail", str(err))  # type: ignore[attr-defined]
        raise new from None


def load_yaml_file(cls: type[N], path: str | os.PathLike) -> N:
    """Build a ``cls`` tree from a UTF-8 YAML file (``~`` expanded); unreadable files are errors."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {file} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
            f"{err.start}); a config is a UTF-8 YAML file"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {file}: {err}") from None
    return load_yaml_text(cls, text, str(file))


# --------------------------------------------------------------------------------------------
# Dotted overrides
# --------------------------------------------------------------------------------------------


def strip_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; any other annotation unchanged."""
    if is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return arms[0]
    return tp


def set_dotted(data: dict[str, Any], cls: type, key: str, value: Any, *, example_key: str = "a.b.c") -> None:
    """Set ``key`` (dotted) in the plain data of a ``cls`` tree, checking each part against types.

    Dict entries (``outputs.image``, ``stages.2``) are addressed by their key; setting a whole entry
    to null removes it, and a missing entry must be set whole. Lists and scalars are set whole.
    ``example_key`` is the dotted key shown when ``key`` is malformed. Values are not checked here:
    rebuild the tree from ``data`` afterwards.
    """
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise ConfigError(f"bad override key {key!r}: expected a dotted key like {example_key}")
    node: Any = data
    tp: Any = cls
    path = ""
    for i, part in enumerate(p.strip() for p in parts):
        last = i == len(parts) - 1
        tp = strip_optional(tp)
        union = tagged_union(tp)
        if union is not None:  # the class the data's tag names (the tag itself is in every class)
            tp = next(iter(union[1].values())) if part == union[0] else _variant(union, node, path)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            names = [f.name for f in init_fields(tp)]
            sub = join(path, part)
            if part not in names:
                raise unknown_key(sub, part, names) if union is None else _foreign_key(union, tp, part, sub)
            if last:
                node[part] = value
                return
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node, tp, path = node[part], hints(tp)[part], sub
        elif typing.get_origin(tp) is dict:
            key_tp, value_tp = typing.get_args(tp)
            entry = coerce_key(part, key_tp, path)
            sub = join(path, key_text(entry))
            existing = {coerce_key(k, key_tp, path): k for k in node}
            if last:
                if value is None:
                    node.pop(existing.get(entry, part), None)
                else:
                    node[existing.get(entry, plain(entry))] = value
                return
            if entry not in existing:
                defined = choices(key_text(k) for k in existing) or "none"
                raise error(
                    sub, f"no such entry (defined: {defined}); to add one, set it whole: {sub}={{...}}"
                )
            node, tp, path = node[existing[entry]], value_tp, sub
        else:
            raise error(path, f"is {describe(tp)}, not a section; set it whole: {path}=...")


def parse_overrides(
    overrides: Iterable[str] | Mapping[str, Any], *, example: str = "a.b.c=1"
) -> list[tuple[Any, Any]]:
    """``(key, value)`` pairs from ``"key=value"`` strings (values parsed as YAML) or a mapping.

    A single string is one override. ``example`` is the override shown when one is malformed.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    items = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. {example}")
        key, _, text = item.partition("=")
        key = key.strip()
        try:
            value = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as err:
            raise error(key, f"cannot parse {text!r} as a YAML value: {err}") from None
        items.append((key, value))
    return items


def apply_overrides(root: N, overrides: Iterable[str] | Mapping[str, Any], *, example: str = "a.b.c=1") -> N:
    """A new, checked tree: ``root`` with dotted-key ``overrides`` applied in order.

    ``overrides`` are as :func:`parse_overrides` takes; Python values (nodes, enums, paths) are
    turned into plain data first. ``example`` (a ``key=value`` override) is shown in the messages for
    malformed overrides and its key part for malformed keys.
    """
    items = parse_overrides(overrides, example=example)
    data = root.to_dict()
    example_key = example.partition("=")[0]
    for key, value in items:
        set_dotted(data, type(root), str(key), plain(value), example_key=example_key)
    return type(root).from_dict(data)
