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
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, gt=0, description="per uploaded file")
    max_request_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="whole multipart request")
    max_json_bytes: int = Field(default=1024 * 1024, gt=0, description="a JSON request body")
    max_upload_files: int = Field(default=20, gt=0, description="files in one submission")
    upload_allowed_types: str = Field(
        default="image/*,audio/*,video/*,application/pdf,application/zip,application/gzip,"
        "application/json,text/plain,application/octet-stream",
        description="comma-separated content types (sniffed from the bytes) accepted for uploads",
    )
    signed_url_ttl_s: int = Field(default=3600, gt=0, description="lifetime of download URLs")
    public_url: str = Field(default="", description="base URL of the API as clients see it (for links)")
    redis_url: str | None = Field(default=None, description="shared rate limits across API nodes")
    rate_limit_per_s: float = Field(default=50.0, gt=0, description="requests per second per principal")
    rate_limit_burst: float = Field(default=100.0, gt=0)
    auth_rate_limit_per_s: float = Field(default=1.0, gt=0, description="failed authentications per IP")
    auth_rate_limit_burst: float = Field(default=10.0, gt=0)
    jwt_hs256_secret: str | None = None
    jwt_rs256_public_key: str | None = Field(default=None, description="PEM text of the RS256 public key")
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: float = Field(default=30.0, ge=0)
    cancel_confirm: bool = Field(default=False, description="two-step cancel: a confirm token first")
    result_cache_ttl_s: float = Field(default=3600.0, ge=0, description="cacheable kinds reuse results")
    retry_base_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles per attempt")
    retry_max_s: float = Field(default=300.0, ge=0, description="upper bound of a retry delay")
