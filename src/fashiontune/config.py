"""Typed configs: dataclass defaults <- YAML file <- command-line `key=value` overrides.

Every job declares its config as a dataclass (see the `*Config` classes in each package). OmegaConf
validates keys and types against it; we turn its exceptions into one `ConfigError` that names the key,
the offending value and the valid choices, because that is what a user needs to fix a typo.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from fashiontune.errors import UserError, one_line
from fashiontune.files import write_text_atomic

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config key, value or file a user must fix; the message says where and how."""


def _field_names(schema: Any, dotted: str) -> list[str]:
    """Valid keys at the node that `dotted` (a full key) points into."""
    node = schema
    for part in dotted.split(".")[:-1]:
        # get_type_hints resolves string annotations (modules using `from __future__ import annotations`)
        hints = typing.get_type_hints(node) if is_dataclass(node) else {}
        node = hints.get(part)
        if node is None or not is_dataclass(node):
            return []
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def _explain(exc: OmegaConfBaseException, schema: type, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        valid = _field_names(schema, key) if key else [f.name for f in fields(schema)]
        leaf = key.split(".")[-1]
        near = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" Did you mean '{'.'.join(key.split('.')[:-1] + [near[0]])}'?" if near else ""
        return ConfigError(
            f"{source}: unknown config key '{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}."
        )
    if isinstance(exc, ValidationError):
        # OmegaConf's message already lists valid enum values; keep its first line and add the key.
        first = str(exc).splitlines()[0]
        return ConfigError(f"{source}: bad value for '{key}': {first}")
    return ConfigError(f"{source}: {exc}")


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else str(problem)


def _load_yaml_mapping(p: Path) -> DictConfig:
    """A config file's contents; it must be a YAML mapping (`key: value` lines) or empty."""
    try:
        text = p.read_text(encoding="utf-8")
        node = yaml.compose(text)  # the document's top-level node, without building it
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the config file as UTF-8 YAML.") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML at {_yaml_problem(e)}; fix that line (see configs/ for examples).") from e
    if node is not None and not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else f"a single value ({node.value!r})"
        raise ConfigError(
            f"{p}: the top level is {kind}, but a config file must be a mapping of keys, e.g. "
            "'name: my-run' and 'optim:' followed by indented '  lr: 1e-4' (see configs/ for examples)."
        )
    try:
        return OmegaConf.load(p)  # type: ignore[return-value]
    except Exception as e:  # duplicate keys and the like, found by OmegaConf's own loader
        raise ConfigError(f"{p}: {one_line(e)}") from e


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build `schema` from its defaults, then a YAML file, then `key=value` overrides; return the dataclass."""
    base = OmegaConf.structured(schema)
    layers: list[tuple[str, DictConfig]] = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist: pass an existing YAML file (see configs/).")
        layers.append((str(p), _load_yaml_mapping(p)))
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"command-line override {bad[0]!r} is not of the form key=value (e.g. optim.lr=1e-4).")
    for o in overrides:
        try:
            layers.append(("command line", OmegaConf.from_dotlist([o])))
        except yaml.YAMLError as e:
            raise ConfigError(f"command line: the value of {o!r} is not valid YAML ({_yaml_problem(e)}); "
                              "quote it, e.g. 'name=\"a: b\"', or fix the brackets of a list.") from e
    cfg = base
    for source, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise _explain(e, schema, source) from e
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise _explain(e, schema, "config") from e


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore[return-value]


def config_hash(cfg: Any) -> str:
    """Short stable hash of a resolved config, recorded in results.json."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config into a run/output directory (first thing a job does)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out / name, to_yaml(cfg))


def require(ok: bool, source: str, key: str, value: Any, want: str) -> None:
    """Raise ConfigError "<source>: <key>=<value> is invalid: <want>." unless `ok` (want = the allowed range)."""
    if not ok:
        raise ConfigError(f"{source}: {key}={value!r} is invalid: {want}.")
