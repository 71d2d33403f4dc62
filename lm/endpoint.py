"""Where an OpenAI-compatible endpoint is and how hard to press it: the settings the judge behind an
endpoint (judges/openai_judge.py) and a collection's sampler (sampling/endpoint.py) share."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field


class EndpointSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(description="the endpoint's /v1 URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    model: str = Field(description="the model name the endpoint serves")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="name of the env var holding the key (only the name is stored)")
    concurrency: int = Field(default=8, gt=0, description="requests in flight")
    timeout_s: float = Field(default=60.0, gt=0, description="per request")
    max_retries: int = Field(default=4, ge=0, description="per request, for 429/5xx/timeouts/connection errors")
    max_requests: int | None = Field(default=None, gt=0, description="request budget per run")

    def api_key(self) -> str:
        """The key from the environment ("not-needed" for a local server without one: the client wants a string)."""
        return (os.environ.get(self.api_key_env, "") if self.api_key_env else "") or "not-needed"
