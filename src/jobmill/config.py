"""Settings, read once from the environment (prefix JOBMILL_) or a .env file.

Nothing else in jobmill reads os.environ.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBMILL_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./var/jobmill.db"
    storage_url: str = "file://./var/blobs"
    secret_key: str = Field(default="", description="signing key for URLs and sessions")
    lease_s: float = Field(default=30.0, gt=0, description="lease length; workers renew at a third of it")
    poll_interval_s: float = Field(default=0.25, gt=0, description="fallback polling for work and cancels")
    cancel_grace_s: float = Field(default=5.0, ge=0, description="SIGTERM to SIGKILL delay")
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="graceful shutdown deadline")
    workdir_root: str = Field(default="./var/work", description="per-job temporary folders live here")
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    retry_base_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles per attempt")
    retry_max_s: float = Field(default=300.0, ge=0, description="upper bound of a retry delay")
