"""Entry point of a handler's child process (isolation="process"); kept apart from the package imports."""

import asyncio
import json
import sys

from jobmill.worker.isolated import child_main

if __name__ == "__main__":
    asyncio.run(child_main(json.loads(sys.stdin.read())))
