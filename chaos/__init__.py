"""The chaos and soak run behind `make chaos`: faults, load and hostile input -> docs/reliability.md."""
