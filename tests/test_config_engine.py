"""Tests of nextgpt.config_engine on small config trees defined here (not nextgpt's own config)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from nextgpt.config_engine import (
    PATH_METADATA,
    Node,
    StrictLoader,
    apply_overrides,
    build,
    check,
    choices,
    coerce,
    coerce_key,
    describe,
    error,
    join,
    load_yaml,
    load_yaml_file,
    load_yaml_text,
    parse_overrides,
    parse_refs,
    plain,
    positive,
    prefixed,
    resolve_path,
    set_dotted,
    show,
    strip_optional,
    tagged_union,
    unknown_key,
)
from nextgpt.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# A small tree
# ---------------------------------------------------------------------------------------------


class Color(Enum):
    """An enum key looked up by value."""

    RED = "red"
    BLUE = "blue"


class Shape(str, Enum):
    """An enum key with its own ``parse`` (case-insensitive), as nextgpt's Modality has."""

    ROUND = "round"
    SQUARE = "square"

    @classmethod
    def parse(cls, value: Any) -> Shape:
        if isinstance(value, Shape):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"unknown shape {value!r}") from None


@dataclass
class Leaf(Node):
    size: int
    double: int | None = field(init=False, default=None, compare=False, repr=False)

    def _validate(self) -> None:
        positive(self, "size")
        self.double = 2 * self.size


@dataclass(kw_only=True)
class Tree(Node):
    name: str = "tree"
    flag: bool = False
    count: int = 1
    rate: float = 0.5
    kind: Literal["oak", "pine"] = "oak"
    mode: Literal["a", "b"] = "a"
    maybe: int | None = None
    workers: int | Literal["auto"] = "auto"
    tags: list[str] = field(default_factory=list)
    leaf: Leaf = field(default_factory=lambda: Leaf(1))
    spare: Leaf | None = None
    leaves: dict[str, Leaf] = field(default_factory=lambda: {"a": Leaf(1)})
    numbered: dict[int, Leaf] = field(default_factory=dict)
    colors: dict[Color, float] = field(default_factory=dict)
    shapes: dict[Shape, int] = field(default_factory=dict)
    path: str | None = field(default=None, metadata=PATH_METADATA)
    extra: Any = None

    def _validate(self) -> None:
        check(self.count <= 100, "count", f"must be <= 100, got {self.count}")


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Errors and message helpers
# ---------------------------------------------------------------------------------------------


def test_error_carries_key_and_detail():
    err = error("a.b", "is bad")
    assert isinstance(err, ConfigError) and str(err) == "a.b: is bad"
    assert (err.key, err.detail) == ("a.b", "is bad")
    assert str(error("", "is bad")) == "is bad"


def test_join_and_prefixed():
    assert join("", "b") == "b" and join("a", "") == "a"
    assert join("a", "b") == "a.b" and join("a", "[0]") == "a[0]"
    err = prefixed(error("size", "must be positive"), "leaves.a")
    assert str(err) == "leaves.a.size: must be positive" and err.key == "leaves.a.size"
    keyless = prefixed(ConfigError("unknown shape 'x'"), "shapes")
    assert str(keyless) == "shapes: unknown shape 'x'" and keyless.detail == "unknown shape 'x'"


def test_choices_show_and_unknown_key_suggestions():
    assert choices([1, "a", Color.RED.value]) == "1, a, red"
    assert (show(None), show(3), show("x")) == ("null", "int 3", "str 'x'")
    assert str(unknown_key("s.nmae", "nmae", ["name", "count"])) == (
        "s.nmae: unknown key; valid keys: name, count (did you mean 'name'?)"
    )
    assert str(unknown_key("zzz", "zzz", ["name", "count"])) == "zzz: unknown key; valid keys: name, count"


def test_check_and_positive():
    check(True, "k", "never raised")
    assert _message(check, False, "k", "is wrong") == "k: is wrong"

    @dataclass
    class Sizes:
        a: int = 1
        b: float = 0.0

    positive(Sizes(), "a")
    assert _message(positive, Sizes(), "a", "b") == "b: must be positive, got 0.0"


def test_describe_annotations():
    assert describe(int) == "an integer" and describe(bool) == "true or false"
    assert describe(float) == "a number" and describe(str) == "a string"
    assert describe(type(None)) == "null"
    assert describe(Literal["x", 2]) == "one of x, 2"
    assert describe(int | Literal["auto"]) == "an integer or one of auto"
    assert describe(list[int]) == "a list of integers" and describe(list[Leaf]) == "a list of items"
    assert describe(dict[str, int]) == "a mapping" and describe(Leaf) == "a mapping"
    assert describe(Color) == "Color"


# ---------------------------------------------------------------------------------------------
# Coercion of each supported type
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        (True, bool, True),
        (3, int, 3),
        (2.0, int, 2),
        (3, float, 3.0),
        (1.5, float, 1.5),
        ("4e-4", float, 4e-4),  # YAML 1.1 reads this as a string
        ("x", str, "x"),
        (Path("/tmp/x"), str, "/tmp/x"),
        ("oak", Literal["oak", "pine"], "oak"),
        (2, Literal[1, 2], 2),
        (None, int | None, None),
        (3, int | None, 3),
        ("auto", int | Literal["auto"], "auto"),
        (4, int | Literal["auto"], 4),
        ([1, 2.0], list[int], [1, 2]),
        (("a", "b"), list[str], ["a", "b"]),
        ({"x": 1}, dict[str, int], {"x": 1}),
        ({"2": 1, 3: 2}, dict[int, int], {2: 1, 3: 2}),
        ({"red": 1}, dict[Color, float], {Color.RED: 1.0}),
        ({"SQUARE": 1}, dict[Shape, int], {Shape.SQUARE: 1}),
        ({1, 2}, Any, {1, 2}),
        (None, Any, None),
    ],
)
def test_coerce_accepts_and_converts(value, tp, expected):
    out = coerce(value, tp, "k")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("value", "tp", "message"),
    [
        (1, bool, "k: expected true or false, got int 1"),
        ("abc", int, "k: expected an integer, got str 'abc'"),
        (True, int, "k: expected an integer, got bool True"),
        (1.5, int, "k: expected an integer, got float 1.5"),
        ("fast", float, "k: expected a number, got str 'fast'"),
        (False, float, "k: expected a number, got bool False"),
        (3, str, "k: expected a string, got int 3"),
        (None, int, "k: expected an integer, got null"),
        ("birch", Literal["oak", "pine"], "k: unknown value 'birch'; valid values: oak, pine"),
        (True, Literal[1, 2], "k: unknown value True; valid values: 1, 2"),  # bool is not 1
        ("1", Literal[1, 2], "k: unknown value '1'; valid values: 1, 2"),
        ("x", int | None, "k: expected an integer, got str 'x'"),  # an optional's arm speaks
        ("many", int | Literal["auto"], "k: expected an integer or one of auto, got str 'many'"),
        (None, int | Literal["auto"], "k: expected an integer or one of auto, got null"),
        (3, list[str], "k: expected a list of strings, got int 3"),
        (["a", 3], list[str], "k[1]: expected a string, got int 3"),
        ([1], dict[str, int], "k: expected a mapping, got list [1]"),
        ({"a": "b"}, dict[str, int], "k.a: expected an integer, got str 'b'"),
        ({1: 1}, dict[str, int], "k.1: expected a string key"),
        ({"x": 1}, dict[int, int], "k.x: expected an integer key"),
        ({True: 1}, dict[int, int], "k.True: expected an integer key"),
        ({"green": 1}, dict[Color, float], "k.green: unknown color; valid: red, blue"),
        ({"oval": 1}, dict[Shape, int], "k.oval: unknown shape; valid: round, square"),
        ({"2": 1, 2: 2}, dict[int, int], "k.2: given twice"),
        ({"ROUND": 1, "round": 2}, dict[Shape, int], "k.round: given twice"),
    ],
)
def test_coerce_rejects_with_the_dotted_key(value, tp, message):
    with pytest.raises(ConfigError) as info:
        coerce(value, tp, "k")
    assert str(info.value) == message
    assert info.value.key + ": " + info.value.detail == message


def test_literal_word_is_kind_for_kind_keys():
    assert _message(coerce, "birch", Literal["oak", "pine"], "tree.kind") == (
        "tree.kind: unknown kind 'birch'; valid kinds: oak, pine"
    )


def test_unsupported_annotations_are_bugs_not_config_errors():
    with pytest.raises(TypeError, match="unsupported annotation"):
        coerce({1}, set[int], "k")
    with pytest.raises(TypeError, match="unsupported mapping key annotation"):
        coerce({1.5: 1}, dict[float, int], "k")
    with pytest.raises(TypeError):
        coerce_key(1.5, float, "k")


def test_coerce_key_enum_without_parse_accepts_members_and_values():
    assert coerce_key(Color.BLUE, Color, "k") is Color.BLUE
    assert coerce_key("blue", Color, "k") is Color.BLUE
    assert coerce_key(" -3", int, "k") == -3
    assert _message(coerce_key, "BLUE", Color, "colors") == "colors.BLUE: unknown color; valid: red, blue"


def test_strip_optional():
    assert strip_optional(Leaf | None) is Leaf
    assert strip_optional(int) is int
    assert strip_optional(int | str | None) == int | str | None


# ---------------------------------------------------------------------------------------------
# Nodes: building, unknown keys, derived values, dict conversion
# ---------------------------------------------------------------------------------------------


def test_direct_construction_is_coerced_and_validated():
    tree = Tree(count=2.0, rate=1, tags=("x",), leaves={"b": {"size": 3}}, colors={"red": 2})
    assert tree.count == 2 and isinstance(tree.count, int) and tree.rate == 1.0
    assert tree.tags == ["x"] and tree.leaves == {"b": Leaf(3)} and tree.leaves["b"].double == 6
    assert tree.colors == {Color.RED: 2.0}
    assert _message(Tree, count=101) == "count: must be <= 100, got 101"
    assert _message(Tree, leaf={"size": 0}) == "leaf.size: must be positive, got 0"


def test_from_dict_names_unknown_and_missing_keys():
    assert _message(Tree.from_dict, {"nmae": "x"}) == (
        "nmae: unknown key; valid keys: name, flag, count, rate, kind, mode, maybe, workers, tags, leaf, "
        "spare, leaves, numbered, colors, shapes, path, extra (did you mean 'name'?)"
    )
    assert _message(Tree.from_dict, {"leaf": {"sise": 2}}) == (
        "leaf.sise: unknown key; valid keys: size (did you mean 'size'?)"
    )
    assert _message(Tree.from_dict, {3: 1}).startswith("3: unknown key; valid keys: name, ")
    assert _message(Tree.from_dict, {"leaves": {"a": {}}}) == "leaves.a.size: required key is missing"
    assert _message(Tree.from_dict, {"leaf": 3}) == "leaf: expected a mapping (section Leaf), got int 3"
    assert _message(Tree.from_dict, {"numbered": {"2": {"size": -1}}}) == (
        "numbered.2.size: must be positive, got -1"
    )
    assert _message(Tree.from_dict, {"leaf": {"double": 2, "size": 1}}).startswith("leaf.double: unknown key")


def test_build_prefixes_errors_and_recheck_copies_instances():
    assert _message(build, Tree, {"count": "x"}, "root") == "root.count: expected an integer, got str 'x'"
    leaf = Leaf(2)
    copy = build(Leaf, leaf, "leaf")
    assert copy == leaf and copy is not leaf
    leaf.size = 0
    assert _message(build, Leaf, leaf, "leaf") == "leaf.size: must be positive, got 0"
    assert _message(build, Leaf, [1], "") == "expected a mapping (section Leaf), got list [1]"


def test_to_dict_is_plain_and_round_trips():
    tree = Tree(
        numbered={2: {"size": 4}}, colors={Color.BLUE: 1.0}, shapes={"Round": 2}, spare=Leaf(3), path="~/x"
    )
    data = tree.to_dict()
    assert data["numbered"] == {2: {"size": 4}}  # derived ``double`` is left out
    assert data["colors"] == {"blue": 1.0} and data["shapes"] == {"round": 2}
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert Tree.from_dict(data) == tree
    assert plain((Color.RED, [Leaf(1)])) == ["red", [{"size": 1}]]


# ---------------------------------------------------------------------------------------------
# ${env:..} / ${pkg:..} references
# ---------------------------------------------------------------------------------------------


def test_parse_refs_finds_references_and_checks_their_syntax():
    assert parse_refs("${env:A}/x/${pkg:a.b}", "k") == [
        ("${env:A}", "env", "A"),
        ("${pkg:a.b}", "pkg", "a.b"),
    ]
    assert parse_refs("plain/path", "k") == []
    assert _message(parse_refs, "${env:1A}", "k") == "k: bad name in '${env:1A}': expected ${env:NAME}"
    assert _message(parse_refs, "${pkg:a..b}", "k") == "k: bad name in '${pkg:a..b}': expected ${pkg:NAME}"
    assert _message(parse_refs, "${oc.env:A}", "k") == (
        "k: unknown reference '${oc.env:A}'; valid forms: ${env:VARIABLE}, ${pkg:package}"
    )
    assert _message(parse_refs, "${env:A", "k") == "k: unterminated '${' in '${env:A'"


def test_path_fields_are_checked_when_built_and_stored_verbatim():
    assert Tree(path="${env:SOME_UNSET_VARIABLE_X}/w").path == "${env:SOME_UNSET_VARIABLE_X}/w"
    assert _message(Tree, path="${envv:X}") == (
        "path: unknown reference '${envv:X}'; valid forms: ${env:VARIABLE}, ${pkg:package}"
    )
    assert Tree(name="${not a path field").name == "${not a path field"


def test_resolve_path_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGINE_TEST_DIR", str(tmp_path))
    assert resolve_path("${env:ENGINE_TEST_DIR}/sub", "k") == tmp_path / "sub"
    monkeypatch.delenv("ENGINE_TEST_DIR")
    assert _message(resolve_path, "${env:ENGINE_TEST_DIR}", "a.path") == (
        "a.path: environment variable ENGINE_TEST_DIR is not set; set it to the local path "
        "or override a.path=..."
    )
    hints = {"ENGINE_TEST_DIR": "your test folder"}
    assert "set it to your test folder or" in _message(
        resolve_path, "${env:ENGINE_TEST_DIR}", "k", env_hints=hints
    )
    monkeypatch.setenv("ENGINE_TEST_DIR", "")  # empty counts as unset
    assert "is not set" in _message(resolve_path, "${env:ENGINE_TEST_DIR}", "k")


def test_resolve_path_pkg():
    assert resolve_path("${pkg:yaml}", "k").resolve() == Path(yaml.__file__).resolve().parent
    import difflib  # a single-file module: its directory

    assert resolve_path("${pkg:difflib}", "k") == Path(os.path.dirname(difflib.__file__))
    assert _message(resolve_path, "${pkg:no_such_package_engine_x}", "k") == (
        "k: package no_such_package_engine_x is not installed (needed for ${pkg:no_such_package_engine_x}); "
        "install the package that provides it or override k=..."
    )
    hints = {"no_such_package_engine_x": "pip install it"}
    assert "); pip install it or override k=..." in _message(
        resolve_path, "${pkg:no_such_package_engine_x}", "k", pkg_hints=hints
    )
    assert _message(resolve_path, "${pkg:sys}", "k") == (
        "k: package sys has no location on disk (needed for ${pkg:sys})"
    )


def test_resolve_path_none_home_and_must_exist(monkeypatch, tmp_path):
    assert resolve_path(None, "k") is None
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/w", "k") == tmp_path / "w"
    assert resolve_path(tmp_path, "k", must_exist=True) == tmp_path
    assert (
        _message(resolve_path, str(tmp_path / "w"), "k", must_exist=True)
        == f"k: {tmp_path / 'w'} does not exist"
    )
    monkeypatch.setenv("ENGINE_TEST_DIR", str(tmp_path))
    assert _message(resolve_path, "${env:ENGINE_TEST_DIR}/w", "k", must_exist=True) == (
        f"k: {tmp_path / 'w'} does not exist (from '${{env:ENGINE_TEST_DIR}}/w')"
    )


# ---------------------------------------------------------------------------------------------
# Strict YAML
# ---------------------------------------------------------------------------------------------


def test_strict_yaml_rejects_duplicate_keys_at_any_depth():
    assert load_yaml("a: 1\nb: {c: 2}\n", "src") == {"a": 1, "b": {"c": 2}}
    message = _message(load_yaml, "a: 1\na: 2\n", "src")
    assert message.startswith("src: invalid YAML: while constructing a mapping")
    assert "found duplicate key 'a'" in message and "line 2" in message
    assert "found duplicate key 'c'" in _message(load_yaml, "b:\n  c: 1\n  c: 2\n", "src")
    assert "found duplicate key 2" in _message(load_yaml, "2: a\n2: b\n", "src")
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key"):
        yaml.load("a: 1\na: 2\n", Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    assert yaml.safe_load("a: 1\na: 2\n") == {"a": 2}  # what the strict loader protects against


def test_strict_yaml_keeps_merge_keys_and_reports_bad_input():
    assert load_yaml("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  e: 3\n", "s")["d"] == {"b": 1, "c": 2, "e": 3}
    # strict: a key given again over a merge is a duplicate too (no silent "last one wins")
    assert "found duplicate key 'b'" in _message(load_yaml, "a: &x {b: 1}\nd:\n  <<: *x\n  b: 3\n", "s")
    assert "found an unhashable key" in _message(load_yaml, "? [1, 2]\n: 3\n", "s")
    assert _message(load_yaml, "[" * 5000, "s") == "s: invalid YAML: nested too deeply to parse"
    assert _message(load_yaml, "a: [", "s").startswith("s: invalid YAML: ")
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object:os.system x", Loader=StrictLoader)  # noqa: S506 - it stays safe


def test_load_yaml_text_and_file(tmp_path):
    assert load_yaml_text(Tree, "count: 3\n", "src").count == 3
    assert (
        _message(load_yaml_text, Tree, "- 1\n", "src")
        == "src: expected a mapping at the top level, got list [1]"
    )
    assert _message(load_yaml_text, Tree, "", "src") == "src: expected a mapping at the top level, got null"
    with pytest.raises(ConfigError) as info:
        load_yaml_text(Tree, "leaf: {size: 0}\n", "src")
    assert str(info.value) == "leaf.size: must be positive, got 0 (in src)"
    assert (info.value.key, info.value.detail) == ("leaf.size", "must be positive, got 0")
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nname: u\n")
    assert _message(load_yaml_file, Tree, path).startswith(f"{path}: invalid YAML: ")
    path.write_text("count: 7\n")
    assert load_yaml_file(Tree, path).count == 7
    assert (
        _message(load_yaml_file, Tree, tmp_path / "no.yaml")
        == f"config file {tmp_path / 'no.yaml'} does not exist"
    )
    path.write_bytes(b"name: \xff\n")
    assert _message(load_yaml_file, Tree, path) == (
        f"config file {path} is not UTF-8 text (byte 0xff at offset 6); a config is a UTF-8 YAML file"
    )
    assert _message(load_yaml_file, Tree, tmp_path).startswith(f"cannot read config file {tmp_path}: ")


# ---------------------------------------------------------------------------------------------
# Dotted overrides
# ---------------------------------------------------------------------------------------------


def test_overrides_into_nested_list_and_dict_fields():
    tree = Tree(numbered={2: {"size": 1}}, colors={"red": 1.0}, shapes={"round": 1})
    new = apply_overrides(
        tree,
        [
            "leaf.size=5",
            "tags=[a, b]",
            "leaves.a.size=7",
            "leaves.z={size: 2}",  # a new entry is set whole
            "numbered.2.size=3",  # an int key addressed by its spelling
            "colors.red=4e-4",
            "colors.blue=2",
            "shapes.ROUND=9",  # through Shape.parse
            "spare.size=4",  # an optional section that was null
            "maybe=3",
            "workers=8",
            "kind=pine",
            "path=${env:X}",
            "extra={any: [thing]}",
        ],
    )
    assert new.leaf == Leaf(5) and new.tags == ["a", "b"]
    assert new.leaves == {"a": Leaf(7), "z": Leaf(2)}
    assert new.numbered == {2: Leaf(3)} and new.spare == Leaf(4)
    assert new.colors == {Color.RED: 4e-4, Color.BLUE: 2.0} and new.shapes == {Shape.ROUND: 9}
    assert (new.maybe, new.workers, new.kind, new.path) == (3, 8, "pine", "${env:X}")
    assert new.extra == {"any": ["thing"]}
    assert tree.leaf == Leaf(1) and tree.tags == []  # the original is untouched
    removed = apply_overrides(
        new, ["leaves.a=null", "shapes.round=null", "maybe=null", "leaves.nothing=null"]
    )
    assert list(removed.leaves) == ["z"] and removed.shapes == {} and removed.maybe is None


def test_overrides_from_a_mapping_of_python_values():
    new = apply_overrides(
        Tree(), {"leaf": Leaf(8), "path": Path("/tmp/p"), "colors": {Color.BLUE: 1}, "tags": ("x",)}
    )
    assert new.leaf == Leaf(8) and new.path == "/tmp/p"
    assert new.colors == {Color.BLUE: 1.0} and new.tags == ["x"]
    assert apply_overrides(Tree(), "count=4").count == 4  # one string is one override


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("leaf.sise=1", "leaf.sise: unknown key; valid keys: size (did you mean 'size'?)"),
        ("cuont=1", "cuont: unknown key; valid keys: name, flag, count,"),
        ("tags.0=x", "tags: is a list of strings, not a section; set it whole: tags=..."),
        ("count.x=1", "count: is an integer, not a section; set it whole: count=..."),
        ("extra.x=1", "extra: is Any, not a section; set it whole: extra=..."),
        ("leaves.q.size=1", "leaves.q: no such entry (defined: a); to add one, set it whole: leaves.q={...}"),
        (
            "numbered.2.size=1",
            "numbered.2: no such entry (defined: none); to add one, set it whole: numbered.2={...}",
        ),
        ("numbered.x=1", "numbered.x: expected an integer key"),
        ("colors.green=1", "colors.green: unknown color; valid: red, blue"),
        ("leaf.size=0", "leaf.size: must be positive, got 0"),
        ("leaf=7", "leaf: expected a mapping (section Leaf), got int 7"),
        ("leaves.z={}", "leaves.z.size: required key is missing"),
        ("kind=birch", "kind: unknown kind 'birch'; valid kinds: oak, pine"),
        ("workers=many", "workers: expected an integer or one of auto, got str 'many'"),
        ("flag=1", "flag: expected true or false, got int 1"),
        ("tags=[a, 3]", "tags[1]: expected a string, got int 3"),
        ("path=${pkgg:x}", "path: unknown reference '${pkgg:x}'"),
        ("count=[1", "count: cannot parse '[1' as a YAML value: "),
        (
            "leaves={a: {size: 1}, a: {size: 2}}",
            "leaves: cannot parse '{a: {size: 1}, a: {size: 2}}' as a YAML value",
        ),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    assert message in _message(apply_overrides, Tree(), [override], example="leaf.size=2")


def test_malformed_overrides_show_the_example():
    assert _message(apply_overrides, Tree(), ["count"], example="leaf.size=2") == (
        "override 'count' must look like key=value, e.g. leaf.size=2"
    )
    assert _message(apply_overrides, Tree(), [3], example="leaf.size=2") == (
        "override 3 must look like key=value, e.g. leaf.size=2"
    )
    assert _message(apply_overrides, Tree(), ["leaf..size=1"], example="leaf.size=2") == (
        "bad override key 'leaf..size': expected a dotted key like leaf.size"
    )
    assert _message(apply_overrides, Tree(), [" =1"], example="leaf.size=2") == (
        "bad override key '': expected a dotted key like leaf.size"
    )
    assert (
        _message(apply_overrides, Tree(), {"": 1}) == "bad override key '': expected a dotted key like a.b.c"
    )


def test_parse_overrides_and_set_dotted_directly():
    assert parse_overrides([" a.b = [1, 2]", "c=", "d=x=y"]) == [("a.b", [1, 2]), ("c", None), ("d", "x=y")]
    assert parse_overrides({"a": 1}) == [("a", 1)]
    data = Tree().to_dict()
    set_dotted(data, Tree, "leaves.a.size", 9)
    set_dotted(data, Tree, "spare.size", 2)
    assert data["leaves"] == {"a": {"size": 9}} and data["spare"] == {"size": 2}
    set_dotted(data, Tree, "leaf.size", "not checked here")  # values are checked on rebuild
    assert data["leaf"] == {"size": "not checked here"}
    assert _message(set_dotted, data, Tree, "a..b", 1, example_key="x.y") == (
        "bad override key 'a..b': expected a dotted key like x.y"
    )


# ---------------------------------------------------------------------------------------------
# Tagged unions
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Animal(Node):
    """The common part of the union's classes (the tag is narrowed by each)."""

    kind: str
    legs: int = 4

    def _validate(self) -> None:
        positive(self, "legs")


@dataclass(kw_only=True)
class Dog(Animal):
    kind: Literal["dog"] = "dog"
    bark: float = 1.0


@dataclass(kw_only=True)
class Bird(Animal):
    kind: Literal["bird"] = "bird"
    legs: int = 2
    wingspan: float = 0.3
    song: str = "tweet"

    def _validate(self) -> None:
        super()._validate()
        check(self.legs == 2, "legs", f"must be 2, got {self.legs}")


@dataclass(kw_only=True)
class Fish(Animal):
    kind: Literal["fish"] = "fish"
    legs: int = 1
    fins: int = 2


AnyAnimal = Dog | Bird | Fish


@dataclass(kw_only=True)
class Zoo(Node):
    star: AnyAnimal = field(default_factory=Dog)
    pets: dict[str, AnyAnimal] = field(default_factory=dict)
    guest: AnyAnimal | None = None


def test_tagged_union_detection():
    assert tagged_union(AnyAnimal) == ("kind", {"dog": Dog, "bird": Bird, "fish": Fish})
    assert tagged_union(AnyAnimal | None) == ("kind", {"dog": Dog, "bird": Bird, "fish": Fish})
    assert tagged_union(Dog | None) is None  # one class: a plain optional section
    assert tagged_union(int | str) is None and tagged_union(Dog) is None
    assert tagged_union(Leaf | Dog) is None  # Leaf has no tag
    assert describe(AnyAnimal) == "a mapping" and describe(AnyAnimal | None) == "a mapping or null"


def test_tagged_union_builds_the_class_the_tag_names():
    zoo = Zoo.from_dict({"star": {"kind": "bird", "song": "caw"}, "pets": {"rex": {"kind": "dog"}}})
    assert zoo.star == Bird(song="caw") and zoo.star.legs == 2  # the class's own defaults
    assert zoo.pets == {"rex": Dog()} and zoo.guest is None
    assert Zoo(star=Fish(fins=3)).star == Fish(fins=3)  # instances are re-checked copies
    assert Zoo.from_dict(zoo.to_dict()) == zoo
    assert zoo.to_dict()["star"] == {"kind": "bird", "legs": 2, "wingspan": 0.3, "song": "caw"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"star": {"kind": "cat"}}, "star.kind: unknown kind 'cat'; valid kinds: dog, bird, fish"),
        ({"star": {"kind": 3}}, "star.kind: unknown kind 3; valid kinds: dog, bird, fish"),
        ({"star": {"kind": None}}, "star.kind: expected one of dog, bird, fish, got null"),
        ({"star": {"legs": 3}}, "star.kind: required key is missing"),
        ({"star": 5}, "star: expected a mapping (a section chosen by kind: dog, bird, fish), got int 5"),
        (
            {"star": {"kind": "dog", "fins": 1}},
            "star.fins: is not used by dog (only by fish); valid keys for dog: kind, legs, bark; remove it",
        ),
        (
            {"pets": {"tweety": {"kind": "bird", "bark": 2}}},
            "pets.tweety.bark: is not used by bird (only by dog); valid keys for bird: kind, legs, "
            "wingspan, song; remove it",
        ),
        (
            {"star": {"kind": "dog", "barc": 1}},
            "star.barc: unknown key; valid keys: kind, legs, bark (did you mean 'bark'?)",
        ),
        ({"star": {"kind": "bird", "legs": 4}}, "star.legs: must be 2, got 4"),
        ({"star": {"kind": "fish", "legs": 0}}, "star.legs: must be positive, got 0"),
        ({"guest": {"kind": "dog", "bark": "loud"}}, "guest.bark: expected a number, got str 'loud'"),
    ],
)
def test_tagged_union_errors_name_the_key_and_the_choices(data, message):
    assert _message(Zoo.from_dict, data) == message


def test_tagged_union_rejects_an_instance_of_another_class():
    assert _message(Zoo, star=Leaf(1)) == (
        "star: expected a mapping (a section chosen by kind: dog, bird, fish), got Leaf Leaf(size=1)"
    )


def test_overrides_into_a_tagged_union_follow_the_tag():
    zoo = Zoo(pets={"nemo": Fish()})
    assert apply_overrides(zoo, ["star.bark=2.5"]).star == Dog(bark=2.5)
    assert apply_overrides(zoo, ["pets.nemo.fins=4"]).pets["nemo"] == Fish(fins=4)
    # Later overrides follow a changed class; changing only the tag keeps the other keys, which must
    # suit the new class (else set the section whole).
    assert apply_overrides(zoo, ["star={kind: bird}", "star.song=caw"]).star == Bird(song="caw")
    assert _message(apply_overrides, zoo, ["star.kind=fish"]) == (
        "star.bark: is not used by fish (only by dog); valid keys for fish: kind, legs, fins; remove it"
    )
    assert apply_overrides(zoo, ["guest={kind: dog}", "guest.legs=3"]).guest == Dog(legs=3)
    assert _message(apply_overrides, zoo, ["star.fins=1"]) == (
        "star.fins: is not used by dog (only by fish); valid keys for dog: kind, legs, bark; remove it"
    )
    assert _message(apply_overrides, zoo, ["star.barc=1"]) == (
        "star.barc: unknown key; valid keys: kind, legs, bark (did you mean 'bark'?)"
    )
    assert _message(apply_overrides, zoo, ["star.kind=cat"]) == (
        "star.kind: unknown kind 'cat'; valid kinds: dog, bird, fish"
    )
    assert _message(apply_overrides, zoo, ["star.kind=cat", "star.legs=1"]) == (
        "star.kind: unknown kind 'cat'; valid kinds: dog, bird, fish"
    )
    assert apply_overrides(zoo, ["star.kind=cat", "star.kind=dog"]) == zoo  # the tag itself can be reset
    assert _message(apply_overrides, zoo, ["star.kind=bird"]) == (
        "star.bark: is not used by bird (only by dog); valid keys for bird: kind, legs, wingspan, song; "
        "remove it"
    )
