"""Settings: the environment and .env parsed and checked by jobmill's own loader (no pydantic)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from jobmill.config import _KINDS, Settings, read_env_file
from jobmill.errors import ConfigError


def test_defaults_and_every_field_has_a_parser() -> None:
    settings = Settings.from_env({}, env_file=None)
    assert settings == Settings()
    assert settings.lease_s == 30.0 and settings.redis_url is None and settings.cancel_confirm is False
    assert {str(f.type) for f in fields(Settings)} <= set(_KINDS)


def test_environment_values_are_parsed_by_type_and_names_ignore_case() -> None:
    settings = Settings.from_env(
        {
            "JOBMILL_LEASE_S": "12.5",
            "JOBMILL_MAX_UPLOAD_FILES": " 7 ",
            "jobmill_cancel_confirm": "Yes",
            "JOBMILL_REDIS_URL": "redis://r:6379/0",
            "JOBMILL_UNKNOWN_THING": "ignored",
            "OTHER": "x",
        },
        env_file=None,
    )
    assert settings.lease_s == 12.5
    assert settings.max_upload_files == 7
    assert settings.cancel_confirm is True
    assert settings.redis_url == "redis://r:6379/0"


@pytest.mark.parametrize(("word", "value"), [("1", True), ("on", True), ("FALSE", False), ("no", False)])
def test_booleans(word: str, value: bool) -> None:
    assert Settings.from_env({"JOBMILL_CANCEL_CONFIRM": word}, env_file=None).cancel_confirm is value


def test_every_bad_value_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {"JOBMILL_LEASE_S": "abc", "JOBMILL_MAX_UPLOAD_FILES": "1.5", "JOBMILL_CANCEL_CONFIRM": "maybe"},
            env_file=None,
        )
    assert str(caught.value) == (
        "JOBMILL_LEASE_S must be a number > 0, not 'abc'; "
        "JOBMILL_MAX_UPLOAD_FILES must be a whole number > 0, not '1.5'; "
        "JOBMILL_CANCEL_CONFIRM must be true or false, not 'maybe'"
    )


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("JOBMILL_LEASE_S", "0", "JOBMILL_LEASE_S must be a number > 0, not 0.0"),
        ("JOBMILL_LEASE_S", "inf", "JOBMILL_LEASE_S must be a number > 0, not inf"),
        ("JOBMILL_LEASE_S", "nan", "JOBMILL_LEASE_S must be a number > 0, not nan"),
        ("JOBMILL_CANCEL_GRACE_S", "-1", "JOBMILL_CANCEL_GRACE_S must be a number >= 0, not -1.0"),
        ("JOBMILL_SIGNED_URL_TTL_S", "0", "JOBMILL_SIGNED_URL_TTL_S must be a whole number > 0, not 0"),
    ],
)
def test_bounds(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        Settings.from_env({name: raw}, env_file=None)


def test_values_given_in_code_are_checked_too() -> None:
    assert Settings(lease_s=5).lease_s == 5
    with pytest.raises(ConfigError, match="JOBMILL_LEASE_S must be a number > 0, not -5"):
        Settings(lease_s=-5)
    with pytest.raises(ConfigError, match="JOBMILL_CANCEL_CONFIRM must be true or false, not 'yes'"):
        Settings(cancel_confirm="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown settings: leese_s"):
        Settings.from_env({}, env_file=None, leese_s=1)


def test_precedence_overrides_then_environment_then_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("JOBMILL_LEASE_S=7\nJOBMILL_POLL_INTERVAL_S=0.5\nJOBMILL_SHUTDOWN_GRACE_S=3\n")
    settings = Settings.from_env(
        {"JOBMILL_POLL_INTERVAL_S": "0.1", "JOBMILL_SHUTDOWN_GRACE_S": "4"},
        env_file=env_file,
        shutdown_grace_s=5.0,
    )
    assert (settings.lease_s, settings.poll_interval_s, settings.shutdown_grace_s) == (7.0, 0.1, 5.0)
    assert Settings.from_env({}, env_file=tmp_path / "missing.env") == Settings()


def test_env_file_syntax(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a comment\n"
        "\n"
        "export JOBMILL_SECRET_KEY = s3cret  # trailing comment\n"
        "JOBMILL_PUBLIC_URL='https://jobs.example.com/#x'\n"
        'JOBMILL_JWT_RS256_PUBLIC_KEY="-----BEGIN-----\\nAAA\\n-----END-----\\n"\n'
        "JOBMILL_JWT_ISSUER=\n"
    )
    assert read_env_file(env_file) == {
        "JOBMILL_SECRET_KEY": "s3cret",
        "JOBMILL_PUBLIC_URL": "https://jobs.example.com/#x",
        "JOBMILL_JWT_RS256_PUBLIC_KEY": "-----BEGIN-----\nAAA\n-----END-----\n",
        "JOBMILL_JWT_ISSUER": "",
    }
    env_file.write_text("JOBMILL_LEASE_S=1\nthis is not an assignment\n")
    with pytest.raises(ConfigError, match=r"\.env, line 2: expected NAME=value"):
        read_env_file(env_file)


def test_a_worker_run_does_not_import_pydantic(tmp_path: Path) -> None:
    """The point of the loader (and of holding typer below 0.29, which builds pydantic adapters for the
    command's parameters): a whole `jobmill worker` run, start to exit, never imports pydantic."""
    env = {**os.environ, "JOBMILL_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}"}
    env["JOBMILL_WORKDIR_ROOT"] = str(tmp_path / "work")
    migrate = [sys.executable, "-m", "jobmill.cli.main", "migrate"]
    subprocess.run(migrate, env=env, check=True, capture_output=True)
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('pydantic loaded:', 'pydantic' in sys.modules, flush=True))\n"
        "sys.argv = ['jobmill', 'worker', '--app', 'jobmill.demo.handlers', '--burst']\n"
        "from jobmill.cli.main import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pydantic loaded: False" in result.stdout, result.stdout


def test_the_readme_lists_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [
        f"JOBMILL_{f.name.upper()}" for f in fields(Settings) if f"`JOBMILL_{f.name.upper()}`" not in readme
    ]
    assert not missing, f"README's configuration table lacks {missing}"
