"""A real S3 HTTP endpoint for the tests: moto's server in a child process on a free local port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Only for the admin client and the environment of the tests: moto accepts any credentials.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # An anonymous temporary file: its output is there to explain a failed start, and it leaves
        # nothing on disk once closed.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; stop() closes it
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **DUMMY_CREDENTIALS},
            start_new_session=True,  # its own process group, so stop() reaches any helper it spawns
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                output = self.output()
                self.stop()
                raise RuntimeError(f"moto server did not listen within {timeout}s:\n{output}")
            time.sleep(0.05)
        return self

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._log.close()
