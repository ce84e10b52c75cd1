"""The `jobmill` command."""
