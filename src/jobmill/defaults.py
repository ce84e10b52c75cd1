"""Defaults shared by the client and the CLI, in a module that imports nothing (the CLI's start-up reads
them without loading the HTTP client)."""

DEFAULT_URL = "http://127.0.0.1:8000"
