"""The planner's configuration: the reference 1.6 ``PlannerConfig`` field names, given to
``python3 -m dynamo.planner --config FILE|JSON`` (a JSON or YAML file, or inline JSON).

Contract: an unknown field is an error; so is a value that asks for something not built here (the
global planner, the ARIMA and Prophet predictors, FPM regression, ...), with a message that names
what is missing. Fields the reference reads from the environment (``DYN_NAMESPACE``,
``PROMETHEUS_ENDPOINT``, ``PLANNER_PROMETHEUS_PORT``) default from it here too. The local runner sets
``DYN_PLANNER_ENVIRONMENT=virtual``, which replaces ``environment``: the same graph runs on a
cluster and on one machine.

Journey: start-up only (before the first observation).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from dynamo.runtime.names import default_namespace

log = logging.getLogger(__name__)

ENVIRONMENT_OVERRIDE_ENV = "DYN_PLANNER_ENVIRONMENT"
PROFILE_FILE_NAME = "planner_profile.json"

# What each predictor needs that dynamo does not ship (asked for by name, refused with this text).
_MISSING_PREDICTORS = {
    "arima": "the statsmodels package (pip install statsmodels; it brings scipy and pandas, ~60 MB)",
    "prophet": "the prophet package (pip install prophet; it brings cmdstanpy and a Stan toolchain)",
}
PREDICTORS = ("constant", "moving_average", "kalman", "arima", "prophet")


class ConfigError(ValueError):
    """A configuration the planner cannot run with; the message says what to change."""


class PlannerConfig(BaseModel):
    """Every field of the reference's ``PlannerConfig`` that a user may write, plus two of ours:
    ``moving_average_window`` and ``scale_up_timeout_seconds``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    # -- where it runs and what it scales --------------------------------------------------------
    environment: Literal["kubernetes", "virtual", "global-planner"] = "kubernetes"
    namespace: str = Field(default_factory=default_namespace)
    backend: Literal["vllm", "sglang", "trtllm", "mocker"] = "vllm"
    mode: Literal["disagg", "prefill", "decode", "agg"] = "disagg"
    model_name: str | None = None
    log_dir: str | None = None
    advisory: bool = False
    global_planner_namespace: str | None = None

    # -- how it decides ----------------------------------------------------------------------------
    optimization_target: Literal["throughput", "latency", "load", "sla"] = "throughput"
    enable_throughput_scaling: bool = True
    enable_load_scaling: bool = False
    throughput_adjustment_interval_seconds: float = Field(
        default=180,
        gt=0,
        validation_alias=AliasChoices(
            "throughput_adjustment_interval_seconds", "throughput_adjustment_interval"
        ),
    )
    load_adjustment_interval_seconds: float = Field(
        default=5,
        gt=0,
        validation_alias=AliasChoices("load_adjustment_interval_seconds", "load_adjustment_interval"),
    )
    ttft_ms: float = Field(default=500.0, gt=0, validation_alias=AliasChoices("ttft_ms", "ttft"))
    itl_ms: float = Field(default=50.0, gt=0, validation_alias=AliasChoices("itl_ms", "itl"))
    scale_up_timeout_seconds: float | None = Field(default=None, gt=0)  # ours: see pending_timeout
    prefill_scale_up_queue_tokens: int | None = Field(default=None, ge=0)
    prefill_scale_down_queue_tokens: int | None = Field(default=None, ge=0)
    decode_scale_up_kv_rate: float | None = Field(
        default=None,
        ge=0,
        le=100,
        validation_alias=AliasChoices("decode_scale_up_kv_rate", "decode_sacle_up_kv_rate"),
    )
    decode_scale_down_kv_rate: float | None = Field(default=None, ge=0, le=100)

    # -- bounds --------------------------------------------------------------------------------------
    max_gpu_budget: int = Field(default=8, ge=-1)
    min_gpu_budget: int = -1
    min_endpoint: int = Field(default=1, ge=0)
    prefill_engine_num_gpu: int | None = Field(default=None, ge=1)
    decode_engine_num_gpu: int | None = Field(default=None, ge=1)

    # -- performance profile (optimization_target: sla) ------------------------------------------------
    profile_results_dir: str = "profiling_results"
    pre_deployment_sweeping_mode: Literal["none", "rapid", "thorough"] | None = "rapid"
    aic_interpolation: dict[str, Any] | None = None

    # -- load prediction -----------------------------------------------------------------------------
    load_predictor: str = "kalman"
    load_predictor_log1p: bool = False
    load_predictor_warmup_trace: str | None = None
    prophet_window_size: int = 50
    moving_average_window: int = Field(default=5, ge=1)
    kalman_q_level: float = Field(default=1.0, ge=0)
    kalman_q_trend: float = Field(default=0.1, ge=0)
    kalman_r: float = Field(default=10.0, gt=0)
    kalman_min_points: int = Field(default=5, ge=1)

    # -- signals -----------------------------------------------------------------------------------
    metric_pulling_prometheus_endpoint: str | None = Field(
        default_factory=lambda: os.environ.get("PROMETHEUS_ENDPOINT") or None
    )
    metric_pulling_prometheus_token: str | None = Field(
        default_factory=lambda: os.environ.get("PROMETHEUS_TOKEN") or None
    )
    metric_pulling_prometheus_ssl_verify: bool = Field(
        default_factory=lambda: (
            os.environ.get("PROMETHEUS_SSL_VERIFY", "false").lower() in ("1", "true", "yes")
        )
    )
    metric_pulling_prometheus_extra_query_params: dict[str, str] | None = None
    metric_reporting_prometheus_port: int = Field(
        default_factory=lambda: int(os.environ.get("PLANNER_PROMETHEUS_PORT") or 0), ge=0
    )
    throughput_metrics_source: Literal["frontend", "router"] = "frontend"

    # -- FPM regression and reports: accepted at their defaults, refused otherwise (not built) ------
    max_num_fpm_samples: int = 64
    fpm_sample_bucket_size: int = 16
    load_scaling_down_sensitivity: int = Field(default=80, ge=0, le=100)
    load_metric_samples: int = 10
    load_min_observations: int = 5
    speculative_nextn: int = Field(default=0, ge=0)
    report_interval_hours: float | None = 24.0
    report_output_dir: str = "./planner_reports"
    report_filename: str | None = None
    report_write_gzip_log: bool = True
    live_dashboard_port: int = 8080

    @model_validator(mode="after")
    def _check(self) -> PlannerConfig:
        if self.optimization_target == "load":
            if self.mode in ("disagg", "prefill"):
                up, down = self.prefill_scale_up_queue_tokens, self.prefill_scale_down_queue_tokens
                if up is None or down is None:
                    raise ValueError(
                        "optimization_target 'load' with a prefill pool needs prefill_scale_up_queue_tokens "
                        "and prefill_scale_down_queue_tokens"
                    )
                if up <= down:
                    raise ValueError(
                        "prefill_scale_up_queue_tokens must be greater than prefill_scale_down_queue_tokens"
                    )
            if self.mode in ("disagg", "decode", "agg"):
                up_kv, down_kv = self.decode_scale_up_kv_rate, self.decode_scale_down_kv_rate
                if up_kv is None or down_kv is None:
                    raise ValueError(
                        "optimization_target 'load' with a decode pool needs decode_scale_up_kv_rate and "
                        "decode_scale_down_kv_rate (percent)"
                    )
                if up_kv <= down_kv:
                    raise ValueError("decode_scale_up_kv_rate must be greater than decode_scale_down_kv_rate")
        return self

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def roles(self) -> tuple[str, ...]:
        """The worker pools this planner scales: ``prefill`` and/or ``decode`` (agg workers are
        the decode pool)."""
        return {"disagg": ("prefill", "decode"), "prefill": ("prefill",)}.get(self.mode, ("decode",))

    @property
    def predictive(self) -> bool:
        """True for the SLA target's throughput-based scaling (profile + prediction)."""
        return self.optimization_target == "sla"

    @property
    def interval(self) -> float:
        """Seconds between decisions: the throughput interval for ``sla``, else the load interval
        (the reference runs the reactive loop for every other target)."""
        return (
            self.throughput_adjustment_interval_seconds
            if self.predictive
            else self.load_adjustment_interval_seconds
        )

    @property
    def pending_timeout(self) -> float:
        """Seconds a scale-up may stay unmet before its pending replicas count as stuck
        (``scale_up_timeout_seconds``, ours; default two intervals, at least 60 s)."""
        if self.scale_up_timeout_seconds is not None:
            return self.scale_up_timeout_seconds
        return max(2 * self.interval, 60.0)

    def gpus(self, role: str) -> int:
        """GPUs per engine of ``role`` (1 unless configured)."""
        value = self.prefill_engine_num_gpu if role == "prefill" else self.decode_engine_num_gpu
        return value or 1

    def profile_path(self) -> Path:
        """The performance profile: ``profile_results_dir`` itself when it is a file, else
        ``planner_profile.json`` in it."""
        path = Path(self.profile_results_dir)
        return path if path.is_file() else path / PROFILE_FILE_NAME


# Fields that select something not built here: (field, value that is fine, what is missing).
_UNBUILT: tuple[tuple[str, Any, str], ...] = (
    ("global_planner_namespace", None, "the global planner"),
    ("min_gpu_budget", -1, "a GPU floor (min_gpu_budget)"),
    (
        "aic_interpolation",
        None,
        "AIConfigurator interpolation; give a profile file instead (docs/planner.md)",
    ),
    ("load_predictor_warmup_trace", None, "warm-up traces for the load predictors"),
    ("max_num_fpm_samples", 64, "forward-pass-metric regression"),
    ("fpm_sample_bucket_size", 16, "forward-pass-metric regression"),
    ("load_scaling_down_sensitivity", 80, "forward-pass-metric regression"),
    ("load_metric_samples", 10, "forward-pass-metric regression"),
    ("load_min_observations", 5, "forward-pass-metric regression"),
    ("speculative_nextn", 0, "speculative-decoding discounts"),
    ("report_filename", None, "HTML diagnostics reports"),
    ("live_dashboard_port", (0, 8080), "the live dashboard"),
    ("report_interval_hours", (None, 24.0), "HTML diagnostics reports"),
    ("report_output_dir", "./planner_reports", "HTML diagnostics reports"),
    ("report_write_gzip_log", True, "HTML diagnostics reports"),
)


def check_buildable(config: PlannerConfig) -> None:
    """Refuse what this planner does not implement (``ConfigError`` naming the missing piece)."""
    if config.environment == "global-planner":
        raise ConfigError("environment 'global-planner' needs the global planner, which is not built")
    if config.load_predictor not in PREDICTORS:
        raise ConfigError(
            f"load_predictor must be one of {', '.join(PREDICTORS)}, got {config.load_predictor!r}"
        )
    if config.load_predictor in _MISSING_PREDICTORS:
        raise ConfigError(
            f"load_predictor {config.load_predictor!r} is not available: it needs "
            f"{_MISSING_PREDICTORS[config.load_predictor]}, which dynamo does not depend on; "
            "use 'kalman', 'moving_average' or 'constant'"
        )
    if config.throughput_metrics_source == "router":
        raise ConfigError(
            "throughput_metrics_source 'router' needs router-side traffic metrics, which are not built"
        )
    if config.predictive and config.enable_load_scaling:
        raise ConfigError(
            "enable_load_scaling under optimization_target 'sla' needs forward-pass-metric regression, which is "
            "not built; set enable_load_scaling: false (throughput-based SLA scaling is built)"
        )
    if config.predictive and not config.enable_throughput_scaling:
        raise ConfigError("optimization_target 'sla' needs enable_throughput_scaling: true")
    for name, fine, what in _UNBUILT:
        value = getattr(config, name)
        allowed = fine if isinstance(fine, tuple) else (fine,)
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} needs {what}, which is not built here; leave it unset")


def _parse_text(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: neither JSON nor YAML: {exc}") from None


def load_config(arg: str, environ: dict[str, str] | None = None) -> PlannerConfig:
    """The configuration from ``--config``: a path to a JSON/YAML file, or inline JSON."""
    env = os.environ if environ is None else environ
    path = Path(arg)
    try:
        is_file = path.is_file()
    except OSError:  # an inline JSON string too long for a path
        is_file = False
    if is_file:
        data = _parse_text(path.read_text(), str(path))
    else:
        try:
            data = json.loads(arg)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config is neither a readable file nor valid JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("--config must hold one object of PlannerConfig fields")
    override = env.get(ENVIRONMENT_OVERRIDE_ENV)
    if override:
        if data.get("environment", override) != override:
            log.info(
                "environment %r replaced by %r (%s)", data["environment"], override, ENVIRONMENT_OVERRIDE_ENV
            )
        data = {**data, "environment": override}
    try:
        config = PlannerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    check_buildable(config)
    return config


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown field (see docs/planner.md for the fields)")
        else:
            lines.append(f"{where}: {err['msg']}")
    return "invalid planner config: " + "; ".join(lines)
