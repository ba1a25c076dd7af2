"""Run configs: one dataclass per run kind, loaded from YAML with ``--set a.b=v`` overrides.

OmegaConf structured configs do the type checks; an unknown key (in the YAML or in an
override) is an error that names the key. ``resolved_config`` writes the result into
the run directory with the git revision and package versions.
"""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the run kind's dataclass."""


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError) and key:
        return f"unknown config key '{key}'"
    return f"{msg} (key '{key}')" if key else msg


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` (a dataclass) from defaults <- YAML file <- ``a.b=v`` overrides."""
    schema = OmegaConf.structured(cls)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as exc:  # YAML syntax errors come in several types
            raise ConfigError(f"cannot parse {path}: {exc}") from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"bad override: {_describe(exc)}") from exc
    try:
        merged = OmegaConf.merge(schema, *layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"{_describe(exc)}{where}; valid top-level keys: "
                          f"{', '.join(f.name for f in dataclasses.fields(cls))}") from exc


def add_config_arguments(parser, example: str) -> None:
    """The one ``--config FILE`` / ``--set KEY=VALUE`` pair every command takes."""
    parser.add_argument("--config", help=f"YAML recipe, e.g. {example} (omitted: the defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set data.root=/data/imagenet")


def config_from_args(cls: type[T], args, **assign: Any) -> T:
    """``load_config`` from ``args.config`` / ``args.overrides``; then each ``assign``
    item that is not None (a command-line flag such as ``--checkpoint``) is set as an
    override of the same name, so it is type-checked and recorded like any other key."""
    extra = [f"{k}={_yaml_value(v)}" for k, v in assign.items() if v is not None]
    return load_config(cls, getattr(args, "config", None), [*getattr(args, "overrides", []), *extra])


def _yaml_value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace('\\', '\\\\').replace('"', '\\"') + '"'
    return str(v).lower() if isinstance(v, bool) else str(v)


def to_dict(config: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def git_revision(repo: Path | None = None) -> str:
    """The repository's HEAD (with '+dirty' when it has changes), or 'unknown'."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("colorbench", "torch", "torchvision", "timm", "kornia", "numpy", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions
