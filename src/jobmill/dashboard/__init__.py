"""The web dashboard served by `jobmill serve` at `/`: see `jobmill.dashboard.routes`."""

from jobmill.dashboard.routes import router

__all__ = ["router"]
