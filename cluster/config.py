"""`ray_config.yaml`: the one file a user edits. Loaded into dataclasses and validated with errors naming the key.

Sections: `engine` (models, dtype, device, batch and context sizes, threads), `speculation` (default method and
draft shape), `cluster` (the Ray cluster, and which resources the target and the drafter actors take) and
`serve` (the public gRPC service: address, auth, TLS, limits).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mirrorspec.errors import InvalidRequestError
from mirrorspec.methods import AR_DRAFTER, METHODS
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.params import SpecParams
from mirrorspec.workers.models import DEFAULT

logger = logging.getLogger(__name__)

CONFIG_ENV = "MIRRORSPEC_CONFIG"
DEFAULT_CONFIG_NAME = "ray_config.yaml"


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class RoleConfig:
    """What one actor (the target, or the drafter) takes: Ray resources, torch threads, pinned CPU cores."""

    resources: dict = field(default_factory=lambda: {"CPU": 1})  # CPU, GPU or any custom resource -> amount
    threads: int | None = 1
    cores: list | None = None  # Linux CPU affinity, e.g. [0]; null = whatever Ray gives

    def validate(self, where: str) -> "RoleConfig":
        if not isinstance(self.resources, dict) or not self.resources:
            raise InvalidRequestError(f"{where}.resources", "must map resource names to amounts, e.g. {CPU: 1}")
        for name, amount in self.resources.items():
            if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount <= 0:
                raise InvalidRequestError(f"{where}.resources.{name}", f"must be a number > 0, got {amount!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InvalidRequestError(f"{where}.threads", f"must be an integer >= 1, got {self.threads!r}")
        if self.cores is not None and (not isinstance(self.cores, list) or not self.cores
                                       or not all(isinstance(c, int) and c >= 0 for c in self.cores)):
            raise InvalidRequestError(f"{where}.cores", f"must be a list of CPU numbers, got {self.cores!r}")
        return self


@dataclass
class ClusterConfig:
    ray: str = "auto"  # auto (Ray for `mirror`, in-process otherwise) | always | never
    address: str | None = None  # null: start an embedded local cluster (or use $RAY_ADDRESS); else ray.init's
    num_cpus: int | None = None  # embedded cluster: CPUs it offers (null: all)
    resources: dict = field(default_factory=dict)  # embedded cluster: custom resources it offers, e.g. {npu: 1}
    placement_strategy: str = "PACK"
    target: RoleConfig = field(default_factory=RoleConfig)
    drafter: RoleConfig = field(default_factory=RoleConfig)
    # Tensor parallelism: the target split over this many ranks (DeepSpeed AutoTP), one Ray actor each, every
    # rank with `target.resources`; `target.cores` is shared out among them in equal consecutive runs.
    tp_size: int = 1
    drafter_port: int = 0  # the speculation server's port on the drafter's node (0: any free port)
    # A drafter already serving the speculation channel (`mirrorspec serve-drafter`), e.g. on another device's
    # process: the target runs in this process and dials it; no Ray.
    drafter_address: str | None = None
    reply_timeout_s: float = 10.0  # the target waits this long for a draft, then decodes without one
    branch_budget: int = 8  # mirror: branches per step over the greedy rows (a sampled row: one, batch-independent)

    def validate(self) -> "ClusterConfig":
        if self.ray not in ("auto", "always", "never"):
            raise InvalidRequestError("cluster.ray", f"must be auto, always or never, got {self.ray!r}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise InvalidRequestError("cluster.placement_strategy",
                                      f"must be one of {', '.join(PLACEMENT_STRATEGIES)}, got {self.placement_strategy!r}")
        if not isinstance(self.resources, dict):
            raise InvalidRequestError("cluster.resources", "must map resource names to amounts")
        for name in ("reply_timeout_s", "branch_budget"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise InvalidRequestError(f"cluster.{name}", f"must be > 0, got {value!r}")
        if self.drafter_address is not None:
            if not isinstance(self.drafter_address, str) or not re.fullmatch(r"[^\s:]+:\d+", self.drafter_address):
                raise InvalidRequestError("cluster.drafter_address", f"must be host:port, got {self.drafter_address!r}")
            if self.ray == "always":
                raise InvalidRequestError("cluster.drafter_address", "dials a drafter outside Ray; it cannot be "
                                                                     "combined with cluster.ray: always")
        if not isinstance(self.tp_size, int) or isinstance(self.tp_size, bool) or self.tp_size < 1:
            raise InvalidRequestError("cluster.tp_size", f"must be an integer >= 1, got {self.tp_size!r}")
        if self.tp_size > 1 and (self.ray == "never" or self.drafter_address):
            raise InvalidRequestError("cluster.tp_size", "tensor-parallel ranks run as Ray actors; not with "
                                                         "cluster.ray: never or a drafter_address")
        if self.tp_size > 1 and self.target.cores and len(self.target.cores) % self.tp_size:
            raise InvalidRequestError("cluster.target.cores", f"{len(self.target.cores)} cores cannot be shared "
                                                              f"equally by {self.tp_size} ranks")
        self.target.validate("cluster.target")
        self.drafter.validate("cluster.drafter")
        return self

    def uses_ray(self, method: str) -> bool:
        """Whether `method` runs as Ray actors here (a name outside the methods table, e.g. the bench's
        hf-assisted, only by `ray: always` or tensor parallelism)."""
        if self.drafter_address:
            return False
        by_default = method in METHODS and METHODS[method].ray_by_default
        return self.ray == "always" or self.tp_size > 1 or (self.ray == "auto" and by_default)

    def rank_role(self, rank: int) -> RoleConfig:
        """What target rank `rank` takes: the target's resources and threads, its share of the target's cores."""
        cores = self.target.cores
        if cores and self.tp_size > 1:
            share = len(cores) // self.tp_size
            cores = cores[rank * share : (rank + 1) * share]
        return dataclasses.replace(self.target, cores=cores)


@dataclass
class ServeConfig:
    """`mirrorspec serve`: the public GenerationService on TGIS's wire (serving/generation_service.py) and the
    OpenAI-compatible HTTP endpoint (serving/openai_http.py)."""

    host: str = "127.0.0.1"
    port: int = 8033
    http_port: int | None = 8000  # OpenAI-compatible HTTP on `host` (0: any free port; null: off)
    model_id: str | None = None  # what clients name in model_id (null: the target folder's name)
    token_env: str | None = None  # environment variable holding the bearer token (the file never holds it)
    token_file: str | None = None  # or a file holding it
    tls_cert: str | None = None  # PEM files; both or neither
    tls_key: str | None = None
    # Replicas are a Ray Serve deployment (cluster/serve_replicas.py), with Serve's names for its settings.
    # Who takes the traffic: `process`, this process's own gRPC and HTTP servers (TLS on both), or `serve`, Ray
    # Serve's HTTP and gRPC proxies in front of the application's Ingress deployment (cluster/serve_app.py).
    ingress: str = "process"
    replicas: int = 1  # num_replicas (cluster.ray: never -> one engine in this process)
    max_replicas: int = 8  # the most a Scale call (mirrorspec scale N) may ask for
    scale_timeout_s: float = 300.0  # new replicas not serving by then fail the Scale call
    admin: bool | None = None  # the AdminService (Scale): null = on only when a token is configured
    autoscaling_config: dict | None = None  # Serve's autoscaling_config (min_replicas, max_replicas,
    # target_ongoing_requests, upscale_delay_s, downscale_delay_s, ...): Serve scales the replicas itself
    max_ongoing_requests: int | None = None  # per replica, in its engine (null: 2 x engine.max_batch)
    max_queued_requests: int = 64  # waiting for a replica with room; past it RESOURCE_EXHAUSTED
    max_prompt_tokens: int = 4096
    max_new_tokens: int = 1024
    default_max_new_tokens: int = 256
    max_batch_prompts: int = 64  # prompts in one Generate call
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 256  # streams and calls in flight at once; past it RESOURCE_EXHAUSTED
    drain_timeout_s: float = 30.0  # on SIGTERM: how long in-flight requests may take to finish
    metrics_port: int | None = 8034  # Prometheus /metrics over HTTP on `host` (0: any free port; null: off)

    def validate(self) -> "ServeConfig":
        for name in ("port", "http_port", "metrics_port"):
            value = getattr(self, name)
            if not (value is None and name != "port") and (
                    not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535):
                raise InvalidRequestError(f"serve.{name}", f"must be in [0, 65535], got {value!r}")
        for name in ("replicas", "max_replicas", "max_queued_requests", "max_prompt_tokens", "max_new_tokens", "default_max_new_tokens",
                     "max_batch_prompts", "max_message_bytes", "max_concurrent_rpcs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequestError(f"serve.{name}", f"must be an integer >= 1, got {value!r}")
        if self.replicas > self.max_replicas:
            raise InvalidRequestError("serve.replicas", f"is above serve.max_replicas ({self.max_replicas})")
        if not isinstance(self.scale_timeout_s, (int, float)) or not self.scale_timeout_s > 0:
            raise InvalidRequestError("serve.scale_timeout_s", f"must be > 0, got {self.scale_timeout_s!r}")
        if self.admin not in (None, True, False):
            raise InvalidRequestError("serve.admin", f"must be true, false or null, got {self.admin!r}")
        if self.default_max_new_tokens > self.max_new_tokens:
            raise InvalidRequestError("serve.default_max_new_tokens", f"is above serve.max_new_tokens "
                                                                      f"({self.max_new_tokens})")
        if not isinstance(self.drain_timeout_s, (int, float)) or self.drain_timeout_s < 0:
            raise InvalidRequestError("serve.drain_timeout_s", f"must be >= 0, got {self.drain_timeout_s!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidRequestError("serve.tls_cert" if self.tls_cert is None else "serve.tls_key",
                                      "TLS needs both tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "token_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise InvalidRequestError(f"serve.{name}", f"{path!r} does not exist")
        if self.max_ongoing_requests is not None and (type(self.max_ongoing_requests) is not int
                                                      or self.max_ongoing_requests < 1):
            raise InvalidRequestError("serve.max_ongoing_requests", f"must be an integer >= 1 or null, got "
                                                                    f"{self.max_ongoing_requests!r}")
        self.autoscaling()
        if self.ingress not in ("process", "serve"):
            raise InvalidRequestError("serve.ingress", f"must be process or serve, got {self.ingress!r}")
        if self.ingress == "serve" and self.tls_cert is not None:
            raise InvalidRequestError("serve.ingress", "Ray Serve's gRPC proxy has no TLS: serve TLS with ingress: "
                                                       "process, or terminate it in front of Serve")
        if self.ingress == "serve" and self.http_port is None:
            raise InvalidRequestError("serve.http_port", "Ray Serve's proxies serve HTTP: ingress: serve needs a "
                                                         "port")
        if self.token_env is not None and self.token_file is not None:
            raise InvalidRequestError("serve.token_env", "give token_env or token_file, not both")
        return self

    def ongoing_requests(self, max_batch: int) -> int:
        """Requests one replica's engine holds: its running batch and the next ones waiting in it."""
        return self.max_ongoing_requests or 2 * max_batch

    def autoscaling(self) -> dict | None:
        """autoscaling_config, checked by Serve's own model (errors name the key)."""
        if self.autoscaling_config is None:
            return None
        if not isinstance(self.autoscaling_config, dict):
            raise InvalidRequestError("serve.autoscaling_config", "must be a mapping of Serve's autoscaling keys")
        from pydantic import ValidationError
        from ray.serve.config import AutoscalingConfig

        unknown = sorted(set(self.autoscaling_config) - set(AutoscalingConfig.model_fields))
        if unknown:
            known = ", ".join(AutoscalingConfig.model_fields)
            raise InvalidRequestError(f"serve.autoscaling_config.{unknown[0]}", f"unknown key; Serve's keys: {known}")
        try:
            AutoscalingConfig(**self.autoscaling_config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(["serve.autoscaling_config", *(str(part) for part in first["loc"])])
            raise InvalidRequestError(where, first["msg"].removeprefix("Value error, ")) from None
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError("serve.autoscaling_config", str(exc)) from None
        return dict(self.autoscaling_config)

    def token(self) -> str | None:
        """The bearer token, read when the server starts (an empty one is an error, not 'no auth')."""
        if self.token_env is not None:
            value = os.environ.get(self.token_env, "")
            where = f"serve.token_env: ${self.token_env}"
        elif self.token_file is not None:
            value = Path(self.token_file).read_text().strip()
            where = f"serve.token_file: {self.token_file}"
        else:
            return None
        if not value:
            raise InvalidRequestError(where.split(":")[0], f"{where.split(': ')[1]} is empty")
        return value


@dataclass
class ProjectConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    speculation: SpecParams = field(default_factory=SpecParams)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def for_own_target(engine: EngineConfig, spec: SpecParams, *, drafter_given: bool = False,
                   method_given: bool = False) -> tuple[EngineConfig, SpecParams]:
    """A target of the user's own has no shipped drafter: where the drafter was left at `default`, it runs with
    none, and a default method that needs a drafter model drafts with `ngram` instead (continuations copied from
    the text: any target, lossless). A drafter or a method named explicitly is kept, and refused as before where
    they do not fit."""
    if engine.target == DEFAULT or engine.drafter != DEFAULT or drafter_given:
        return engine, spec
    engine = dataclasses.replace(engine, drafter=None)
    if not method_given and METHODS[spec.method].drafter == AR_DRAFTER:
        logger.warning("target %s has no shipped drafter: speculating with `ngram` drafts (copied from the text); "
                       "give --drafter DIR (or engine.drafter) for a drafter model", engine.target)
        spec = dataclasses.replace(spec, method="ngram")
    return engine, spec


def _section(cls, data: object, name: str, source: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{source}:{name}", "must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise InvalidRequestError(f"{source}:{name}.{key}", f"unknown key; known keys: {', '.join(known)}")
    return cls(**data)


def find_config(explicit: str | None = None) -> Path | None:
    """--config, else $MIRRORSPEC_CONFIG, else ./ray_config.yaml if present."""
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            raise InvalidRequestError("config", f"{explicit!r} is a directory, not a YAML file")
        if not path.is_file():
            raise InvalidRequestError("config", f"{explicit!r} does not exist")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        return find_config(env)
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.is_file() else None


def load_config(path: Path | None) -> ProjectConfig:
    if path is None:
        return ProjectConfig()
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InvalidRequestError(source, f"is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidRequestError(source, "is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(source, "must be a mapping of sections")
    sections = {"engine": EngineConfig, "speculation": SpecParams, "cluster": ClusterConfig, "serve": ServeConfig}
    for key in data:
        if key not in sections:
            raise InvalidRequestError(f"{source}:{key}", f"unknown section; known: {', '.join(sections)}")
    try:
        parsed = {name: _section(cls, data.get(name), name, source) for name, cls in sections.items()}
        cluster = parsed["cluster"]
        for role in ("target", "drafter"):
            value = getattr(cluster, role)
            if not isinstance(value, RoleConfig):
                setattr(cluster, role, _section(RoleConfig, value, f"cluster.{role}", source))
        config = ProjectConfig(**parsed)
    except TypeError as exc:
        raise InvalidRequestError(source, str(exc)) from None
    config.engine.validate()
    config.cluster.validate()
    config.serve.validate()
    return config
