"""jobmill: a self-hosted async job service."""
