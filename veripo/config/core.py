"""YAML -> frozen dataclasses, with dotted ``key=value`` overrides and errors that say how to fix them.

A config is a tree of frozen dataclasses. ``build(Schema, mapping)`` walks the schema, converts each value
to the annotated type and rejects what does not fit, naming the dotted key, the bad value, what is allowed
and (for a typo) the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, get_args, get_origin, get_type_hints

import yaml

from veripo.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config value or key is wrong; the message names the key and what is allowed."""


def _closest(name: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to annotated type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    bad = ConfigError(f"config key '{key}': got {value!r} ({type(value).__name__}); expected {_type_name(tp)}.")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': got {value!r}; expected a mapping of {tp.__name__} fields.")
        return build(tp, value, prefix=key)
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value
        hint = _closest(str(value), [str(a) for a in allowed]) if isinstance(value, str) else ""
        raise ConfigError(
            f"config key '{key}': got {value!r}; allowed values are {', '.join(repr(a) for a in allowed)}.{hint}"
        )
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise bad
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = get_args(tp)[:1] or (Any,)
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_convert(k, k_tp, key): _convert(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise bad
    return value


# The range every numeric config key must lie in, by the key's name (the last part of its dotted path), so a
# field added to any schema dataclass is checked without a list of keys to keep up to date. Every number must
# also be finite. First match wins; a name matching none is only checked for being finite.
#   (kind, names ("_x": any name ending in _x), lower bound, lower bound allowed, upper bound)
NUMBER_RULES: tuple[tuple[str, tuple[str, ...], float, bool, float], ...] = (
    ("share", ("_prob", "_threshold", "_share", "top_p", "dropout", "_utilization"), 0.0, True, 1.0),
    ("non-negative", ("seed", "iterations", "warmup_steps", "weight_decay", "_coef", "retries", "clip_low",
                      "clip_high", "min_thinking_tokens", "weight", "max_resample_rounds", "overlong_buffer",
                      "overlong_penalty", "temporal_bonus"), 0.0, True, math.inf),
    ("count", ("batch_size", "_batch_size", "_group_size", "_batches", "num_generations", "max_steps", "size", "gpus",
               "max_new_tokens", "save_every", "eval_every", "concurrency", "_frames", "_pixels", "_tokens",
               "repetition_ngram", "max_pairs_per_question", "batch_questions", "limit", "min_correct", "rank", "_model_len",
               "temporal_generations", "max_tokens_per_micro_batch", "workers"), 1.0, True, math.inf),
    # epochs may be fractional (a share of one pass over the stage's data)
    ("positive", ("lr", "beta", "alpha", "fps", "_s", "_gib", "epochs", "temperature", "temporal_ratio", "max_grad_norm", "repetition_penalty"),
     0.0, False, math.inf),
)


def number_rule(name: str) -> tuple[str, float, bool, float] | None:
    """The range a numeric key called ``name`` must lie in: (kind, low, low allowed, high), or None."""
    for kind, names, low, closed, high in NUMBER_RULES:
        if any(name == n or (n.startswith("_") and name.endswith(n)) for n in names):
            return kind, low, closed, high
    return None


def check_numbers(value: Any, key: str) -> None:
    """Raise ConfigError naming ``key`` when a number (or a number inside a list or mapping) is not finite or
    lies outside the range ``number_rule`` gives its name."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_numbers(item, f"{key}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            check_numbers(item, f"{key}.{k}")
        return
    if not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise ConfigError(f"config key '{key}': got {value!r}; expected a finite number.")
    rule = number_rule(key.rsplit(".", 1)[-1].split("[", 1)[0])
    if rule is None:
        return
    kind, low, closed, high = rule
    if value < low or (value == low and not closed) or value > high:
        expected = {"share": "a share between 0 and 1", "count": "a count of at least 1",
                    "positive": "a number above 0", "non-negative": "a number of at least 0"}[kind]
        raise ConfigError(f"config key '{key}': got {value!r}; expected {expected}.")


def build(schema: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``schema`` from a nested mapping; unknown keys and wrong types raise ConfigError."""
    data = dict(data or {})
    hints = get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(
                f"unknown config key '{key}'.{_closest(str(name), fields)} "
                f"Valid keys{' under ' + repr(prefix) if prefix else ''}: {', '.join(sorted(fields))}."
            )
        kwargs[name] = _convert(value, hints[name], key)
        check_numbers(kwargs[name], key)
    try:
        obj = schema(**kwargs)
    except TypeError as e:  # a required field without a default
        raise ConfigError(f"config section '{prefix or schema.__name__}': {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'grpo.lr=1e-6'`` -> (['grpo', 'lr'], 1e-06). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    if not raw.strip():
        return parts, ""
    try:
        return parts, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                          "quote it or fix the brackets") from None


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (a copy); list indices are allowed (``stages.1.lr=1e-6``)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError):
                    raise ConfigError(f"override {text!r}: '{'.'.join(parts[: i + 1])}' is not a valid list index") from None
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {text!r}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError):
                raise ConfigError(f"override {text!r}: '{last}' is not a valid list index") from None
        else:
            node[last] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last one, so a
    second ``grpo:`` section would silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConfigError(f"line {line}: key {key!r} is given twice in one mapping (first on line "
                                  f"{seen[key]}); YAML would keep only the last")
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8 (byte offset {e.start}); save the config as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys, got {type(data).__name__}")
    return data


def load(schema: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Load ``schema`` from a YAML file (or defaults when None) plus dotted overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    try:
        return build(schema, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def to_dict(obj: Any) -> Any:
    """A config as plain YAML-able data (tuples -> lists, Paths -> str)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)
