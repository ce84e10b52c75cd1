"""Settings, read once from the environment (prefix JOBMILL_) or a .env file.

Nothing else in jobmill reads os.environ. `Settings.from_env()` reads them; `Settings(...)` takes values
as given (tests, embedding). Either way every value is checked, and all bad ones are reported together
in one ConfigError that names the variables, which the CLI prints as one line.

The loader is the standard library's on purpose: every worker start imports this module, and
pydantic-settings (with pydantic under it) was most of a worker's start-up CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from jobmill.errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "read_env_file"]

ENV_PREFIX = "JOBMILL_"
TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def _setting(default: Any, *, gt: float | None = None, ge: float | None = None, about: str = "") -> Any:
    """A field with its bounds (exclusive `gt`, inclusive `ge`) and a one-line description."""
    return field(default=default, metadata={"gt": gt, "ge": ge, "about": about})


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "sqlite:///./var/jobmill.db"
    storage_url: str = "file://./var/blobs"
    secret_key: str = _setting("", about="signing key for URLs and sessions")
    lease_s: float = _setting(30.0, gt=0, about="lease length; workers renew at a third of it")
    poll_interval_s: float = _setting(0.25, gt=0, about="fallback polling for work and cancels")
    cancel_grace_s: float = _setting(5.0, ge=0, about="SIGTERM to SIGKILL delay")
    shutdown_grace_s: float = _setting(10.0, ge=0, about="graceful shutdown deadline")
    workdir_root: str = _setting("./var/work", about="per-job temporary folders live here")
    max_upload_bytes: int = _setting(100 * 1024 * 1024, gt=0, about="per uploaded file")
    max_request_bytes: int = _setting(256 * 1024 * 1024, gt=0, about="whole multipart request")
    max_json_bytes: int = _setting(1024 * 1024, gt=0, about="a JSON request body")
    max_upload_files: int = _setting(20, gt=0, about="files in one submission")
    upload_allowed_types: str = _setting(
        "image/*,audio/*,video/*,application/pdf,application/zip,application/gzip,"
        "application/json,text/plain,application/octet-stream",
        about="comma-separated content types (sniffed from the bytes) accepted for uploads",
    )
    signed_url_ttl_s: int = _setting(3600, gt=0, about="lifetime of download URLs")
    public_url: str = _setting("", about="base URL of the API as clients see it (for links)")
    redis_url: str | None = _setting(None, about="shared rate limits across API nodes")
    rate_limit_per_s: float = _setting(50.0, gt=0, about="requests per second per principal")
    rate_limit_burst: float = _setting(100.0, gt=0)
    auth_rate_limit_per_s: float = _setting(1.0, gt=0, about="failed authentications per IP")
    auth_rate_limit_burst: float = _setting(10.0, gt=0)
    jwt_hs256_secret: str | None = None
    jwt_rs256_public_key: str | None = _setting(None, about="PEM text of the RS256 public key")
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: float = _setting(30.0, ge=0)
    cancel_confirm: bool = _setting(False, about="two-step cancel: a confirm token first")
    result_cache_ttl_s: float = _setting(3600.0, ge=0, about="cacheable kinds reuse results")
    retry_base_s: float = _setting(1.0, ge=0, about="first retry delay; doubles per attempt")
    retry_max_s: float = _setting(300.0, ge=0, about="upper bound of a retry delay")

    def __post_init__(self) -> None:
        problems = [p for f in fields(self) if (p := _check(f, getattr(self, f.name))) is not None]
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | os.PathLike[str] | None = ".env",
        **overrides: Any,
    ) -> Settings:
        """Settings from `overrides`, else the environment (`os.environ` by default), else `env_file`
        (skipped when it does not exist), else the defaults. Variable names are matched without regard
        to case. A value that does not parse or is out of bounds raises ConfigError, with all others."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        sources: list[dict[str, str]] = [
            {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
        ]
        if env_file is not None and Path(env_file).is_file():
            sources.append({k.upper(): v for k, v in read_env_file(env_file).items()})
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            name = ENV_PREFIX + f.name.upper()
            raw = next((source[name] for source in sources if name in source), None)
            if raw is None:
                continue
            try:
                values[f.name] = _KINDS[str(f.type)].parse(raw)
            except ValueError:
                problems.append(f"{name} must be {_expected(f)}, not {raw!r}")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**values)


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """`KEY=VALUE` lines of a .env file: blank lines and `#` comments skipped, an optional `export `
    prefix, values in single quotes taken as they are, in double quotes with `\\n`, `\\"` and `\\\\`
    unescaped, unquoted ones up to a ` #` comment and stripped. A line that is not an assignment is a
    ConfigError naming it."""
    values: dict[str, str] = {}
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("_", "a").isalnum():
            raise ConfigError(f"{path}, line {number}: expected NAME=value, not {line!r}")
        values[key] = _env_value(value.strip())
    return values


def _env_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out, chars = [], iter(value[1:-1])
        for char in chars:
            if char == "\\":
                escaped = next(chars, "\\")
                out.append({"n": "\n", "t": "\t"}.get(escaped, escaped))
            else:
                out.append(char)
        return "".join(out)
    comment = value.find(" #")
    return (value if comment < 0 else value[:comment]).strip()


def _parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise ValueError(raw)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class _Kind:
    """What a field's annotation means: how its environment text parses, which values it takes, and
    how an error names it."""

    parse: Callable[[str], Any]  # raises ValueError
    accepts: Callable[[Any], bool]
    what: str


# By the field's annotation (a string: annotations are postponed). A test checks that every field has one.
# int() and float() strip surrounding whitespace themselves.
_KINDS: dict[str, _Kind] = {
    "str": _Kind(str, lambda v: isinstance(v, str), "text"),
    "str | None": _Kind(str, lambda v: v is None or isinstance(v, str), "text"),
    "int": _Kind(int, lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": _Kind(float, _is_number, "a number"),
    "bool": _Kind(_parse_bool, lambda v: isinstance(v, bool), "true or false"),
}


def _expected(f: Field[Any]) -> str:
    gt, ge = f.metadata.get("gt"), f.metadata.get("ge")
    bounds = ([f"> {gt:g}"] if gt is not None else []) + ([f">= {ge:g}"] if ge is not None else [])
    return " ".join([_KINDS[str(f.type)].what, *bounds])


def _check(f: Field[Any], value: Any) -> str | None:
    """What is wrong with `value` for field `f`, or None. Bounds are set on numeric fields only."""
    gt, ge = f.metadata.get("gt"), f.metadata.get("ge")
    if _KINDS[str(f.type)].accepts(value) and (gt is None or value > gt) and (ge is None or value >= ge):
        return None
    return f"{ENV_PREFIX}{f.name.upper()} must be {_expected(f)}, not {value!r}"
