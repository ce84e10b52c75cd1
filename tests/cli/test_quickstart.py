"""The README's 5-minute tour, run as written against `make run`'s service.

`make run` runs in a copy of the repository's top level (Makefile, scripts, README, pyproject; .venv and
src linked), so its `var/` is fresh and the developer's own is untouched. The one liberty: a free port
instead of 8000 (JOBMILL_PORT for `make run`, JOBMILL_URL for the commands, and `127.0.0.1:8000` in the
commands' text replaced by that address).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import REPO, wait_until
from tests.support.service import free_port

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"<!-- quickstart\b[^>]*-->\s*```sh\n(?P<code>.*?)```\s*<!-- /quickstart -->", re.S)


def quickstart(readme: str) -> str:
    match = BLOCK.search(readme)
    assert match, "the README has no quickstart block (```sh between <!-- quickstart --> markers)"
    return match["code"]


class MakeRun:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = folder / "make-run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMILL_")}
        env["JOBMILL_PORT"] = str(port)
        env["JOBMILL_SHUTDOWN_GRACE_S"] = "0"  # at the end of the test, hand running demo jobs back at once
        stamp = ".venv/.installed"  # the linked venv is set up already: never reinstall it from here
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["make", "--no-print-directory", "-o", stamp, "run"],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: make, the script, jobmill serve
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log()
            try:
                return httpx.get(f"{self.url}/api/v1/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, "make run to serve", interval=0.1)

    def stop(self) -> None:
        for signum, grace in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    folder = tmp_path / "jobmill"
    folder.mkdir()
    for name in ("Makefile", "README.md", "pyproject.toml"):
        shutil.copy2(REPO / name, folder / name)
    shutil.copytree(REPO / "scripts", folder / "scripts")
    (folder / ".venv").symlink_to(REPO / ".venv")
    (folder / "src").symlink_to(REPO / "src")
    return folder


@pytest.fixture
def make_run(checkout: Path) -> Iterator[MakeRun]:
    service = MakeRun(checkout, free_port())
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def bash(script: str, cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMILL_")}
    env["JOBMILL_URL"] = url
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_readme_quickstart_against_make_run(make_run: MakeRun) -> None:
    folder = make_run.folder
    key = (folder / "var" / "demo-admin.key").read_text().strip()
    assert (folder / "var" / "demo-admin.key").stat().st_mode & 0o777 == 0o600
    banner = make_run.log()
    assert key in banner and f"dashboard   {make_run.url}/" in banner
    assert httpx.get(f"{make_run.url}/", timeout=5).status_code == 200  # the dashboard URL it prints

    script = quickstart((folder / "README.md").read_text()).replace("127.0.0.1:8000", make_run.url[7:])
    tour = bash(script, folder, make_run.url)
    assert tour.returncode == 0, f"{tour.stdout}\n{tour.stderr}\n{make_run.log()}"
    assert '"frames": 10' in tour.stdout and '"succeeded_on_attempt": 2' in tour.stdout
    digest = hashlib.sha256((folder / "README.md").read_bytes()).hexdigest()
    assert (folder / "var" / "downloads" / "checksum.txt").read_text() == f"{digest}  README.md\n"
    assert f"{digest}  README.md" in tour.stdout  # the `cat` of the download
    assert '"status":"cancelled"' in tour.stdout.replace(" ", "")  # the curl of the cancelled job

    # The commands `make run` prints work as printed (from the same folder).
    printed = [line.strip() for line in banner.splitlines() if ".venv/bin/jobmill submit" in line]
    printed += [line.strip() for line in banner.splitlines() if line.strip().startswith("curl ")]
    assert len(printed) == 2, banner
    submit, curl = (bash(command, folder, "http://127.0.0.1:1") for command in printed)  # no help from env
    assert submit.returncode == 0 and '"frames": 20' in submit.stdout, f"{printed[0]}\n{submit.stderr}"
    assert curl.returncode == 0 and '"kind":"demo.sleep"' in curl.stdout, f"{printed[1]}\n{curl.stderr}"
