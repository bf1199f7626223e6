"""The one home of configuration: every setting is an environment variable, declared once below.

Every process of the stack (CLI, invoker, Airflow components, spark-submit) is started with the
same environment, so reading it here gives all of them the same view. Each field of
:class:`Settings` is the whole declaration of a setting (variable, type, default, meaning): the
validation and the reference page ``docs/configuration.md`` (``lakehouse docs config``, checked
by a test) both come from it, so no table is kept by hand. An empty variable counts as unset.
Secrets that must not have a public default (Airflow's password, the JWT key, the webhook token)
are generated on first use into ``$LAKEHOUSE_HOME/secrets.json`` (mode 0600) unless given.
"""

from __future__ import annotations

import json
import secrets
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import quote

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["SeaweedPorts", "Settings", "load_settings", "settings_reference_markdown"]

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SeaweedPorts:
    """The local SeaweedFS's six ports, in the order ``LAKEHOUSE_SEAWEED_PORTS`` lists them."""

    master: int
    volume: int
    filer: int
    s3: int
    webdav: int
    iceberg: int

    @classmethod
    def parse(cls, text: str) -> SeaweedPorts:
        try:
            parts = [int(p) for p in text.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 6:
            raise ValueError(
                f"LAKEHOUSE_SEAWEED_PORTS needs 6 ports (master,volume,filer,s3,webdav,iceberg), got {text!r}"
            )
        return cls(*parts)


def setting(
    variable: str,
    description: str,
    default: Any = None,
    *,
    derived: Callable[[dict[str, Any]], Any] | None = None,
    shown: str | None = None,
    kind: str | None = None,
    ge: float | None = None,
    secret: bool = False,
) -> Any:
    """One setting's declaration: its variable, meaning and default (``derived`` computes it from
    the settings declared above; ``shown`` is how the reference prints it, ``kind`` its type)."""
    extra: dict[str, Any] = {}
    if shown is not None:
        extra["shown"] = shown
    if kind is not None:
        extra["kind"] = kind
    if derived is not None:
        return Field(
            default_factory=derived,
            validation_alias=variable,
            description=description,
            ge=ge,
            repr=not secret,
            json_schema_extra=extra,
        )
    return Field(
        default, validation_alias=variable, description=description, ge=ge, repr=not secret, json_schema_extra=extra
    )


def _resolved(path: Path) -> Path:
    return path.resolve()


def _comma_list(value: Any) -> Any:
    return tuple(c.strip() for c in value.split(",") if c.strip()) if isinstance(value, str) else value


def _ports(value: Any) -> Any:
    return SeaweedPorts.parse(value) if isinstance(value, str) else value


def _flag(value: Any) -> Any:
    """``1`` is on and anything else off, as the stack has always read ``LAKEHOUSE_PG_MANAGED``."""
    return value == "1" if isinstance(value, str) else value


_SECRET_FILE = "generated on first use, kept in `$LAKEHOUSE_HOME/secrets.json`"


class Settings(BaseSettings):
    """A snapshot of the configuration, taken from the environment by :func:`load_settings`.

    Declaration order matters: a derived default sees only the settings declared above it.
    """

    model_config = SettingsConfigDict(
        case_sensitive=True,
        env_ignore_empty=True,
        enable_decoding=False,
        frozen=True,
        validate_default=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    # -- where things are ----------------------------------------------------------------------
    root: Annotated[Path, AfterValidator(_resolved)] = setting(
        "LAKEHOUSE_ROOT",
        "the checkout (`dags/`, `glue_templates/`, `metadata/` ...)",
        _PACKAGE_ROOT,
        shown="two levels above the `lakehouse` package",
    )
    home: Annotated[Path, AfterValidator(_resolved)] = setting(
        "LAKEHOUSE_HOME",
        "runtime state: data, logs, pids, secrets",
        derived=lambda s: s["root"] / "var",
        shown="`$LAKEHOUSE_ROOT/var`",
    )
    # -- Postgres --------------------------------------------------------------------------------
    pg_host: str = setting("LAKEHOUSE_PG_HOST", "the Postgres server of the stack", "127.0.0.1")
    pg_port: int = setting("LAKEHOUSE_PG_PORT", "port of that server", 5433)
    pg_user: str = setting("LAKEHOUSE_PG_USER", "login on that server", "lakehouse")
    pg_password: str = setting("LAKEHOUSE_PG_PASSWORD", "password of that login", "lakehouse", secret=True)
    pg_managed: Annotated[bool, BeforeValidator(_flag)] = setting(
        "LAKEHOUSE_PG_MANAGED",
        "`1`: the stack runs its own Postgres cluster; anything else: it uses the "
        "server above as it is (docker compose, RDS)",
        True,
        shown="`1`",
        kind="flag",
    )
    metadata_db: str = setting("LAKEHOUSE_METADATA_DB", "flows, templates, ledger, audit", "lakehouse")
    airflow_db: str = setting("LAKEHOUSE_AIRFLOW_DB", "Airflow's own database", "airflow")
    catalog_db: str = setting("LAKEHOUSE_CATALOG_DB", "the Iceberg JDBC catalog", "iceberg_catalog")
    warehouse_db: str = setting("LAKEHOUSE_WAREHOUSE_DB", "the local warehouse", "warehouse")
    given_metadata_dsn: str | None = setting(
        "LAKEHOUSE_METADATA_DSN",
        "the metadata database as a whole URL (e.g. RDS), instead of the server and database above",
        shown="built from the `LAKEHOUSE_PG_*` settings",
        secret=True,
    )
    given_warehouse_dsn: str | None = setting(
        "LAKEHOUSE_WAREHOUSE_DSN",
        "the warehouse database as a whole URL",
        shown="built from the `LAKEHOUSE_PG_*` settings",
        secret=True,
    )
    given_catalog_dsn: str | None = setting(
        "LAKEHOUSE_CATALOG_DSN",
        "the Iceberg catalog database as a SQLAlchemy URL (PyIceberg's `SqlCatalog`)",
        shown="built from the `LAKEHOUSE_PG_*` settings",
        secret=True,
    )
    # -- the landing store (S3 API) ----------------------------------------------------------------
    s3_endpoint_url: str = setting("LAKEHOUSE_S3_ENDPOINT_URL", "S3 API of the landing store", "http://127.0.0.1:8333")
    s3_access_key_id: str = setting("LAKEHOUSE_S3_ACCESS_KEY_ID", "S3 access key", "lakehouse")
    s3_secret_access_key: str = setting(
        "LAKEHOUSE_S3_SECRET_ACCESS_KEY", "S3 secret key", "lakehouse-secret", secret=True
    )
    landing_bucket: str = setting("LAKEHOUSE_LANDING_BUCKET", "the bucket files are dropped into", "landing")
    seaweed_ports: Annotated[SeaweedPorts, BeforeValidator(_ports)] = setting(
        "LAKEHOUSE_SEAWEED_PORTS",
        "ports of the local SeaweedFS: master, volume, filer, s3, webdav, iceberg",
        "9333,9340,8888,8333,7333,8181",
        kind="6 ports, comma-separated",
    )
    # -- the invoker --------------------------------------------------------------------------------
    invoker_port: int = setting("LAKEHOUSE_INVOKER_PORT", "the invoker's webhook port", 8765)
    invoker_bind: str = setting("LAKEHOUSE_INVOKER_BIND", "address the invoker listens on", "127.0.0.1")
    given_invoker_token: str | None = setting(
        "LAKEHOUSE_INVOKER_TOKEN",
        "webhook secret: bearer token, or HMAC key of `X-Lakehouse-Signature: sha256=<hex>`",
        shown=_SECRET_FILE,
        secret=True,
    )
    invoker_retry_base: float = setting(
        "LAKEHOUSE_INVOKER_RETRY_BASE", "first retry delay (s) of a pending trigger; doubles per attempt", 2.0, ge=0
    )
    invoker_retry_max: float = setting("LAKEHOUSE_INVOKER_RETRY_MAX", "longest retry delay (s)", 300.0, ge=0)
    invoker_db_pool: int = setting(
        "LAKEHOUSE_INVOKER_DB_POOL", "Postgres connections the invoker keeps open (at most in use at once)", 8, ge=1
    )
    invoker_dispatch_workers: int = setting(
        "LAKEHOUSE_INVOKER_WORKERS", "threads calling Airflow after the webhook answered", 8, ge=1
    )
    invoker_lease: float = setting(
        "LAKEHOUSE_INVOKER_LEASE",
        "seconds a row being triggered is held before the retry loop (or another invoker) may take it over",
        30.0,
        ge=1,
    )
    invoker_catalogue_ttl: float = setting(
        "LAKEHOUSE_INVOKER_CATALOGUE_TTL",
        "seconds the invoker caches the flows (a new flow is seen within this)",
        5.0,
        ge=0,
    )
    reconcile_interval: float = setting(
        "LAKEHOUSE_RECONCILE_INTERVAL",
        "seconds between the invoker's sweeps of each file-triggered flow's "
        "prefix for files no event announced; `0`: off",
        900.0,
        ge=0,
    )
    # -- Airflow ----------------------------------------------------------------------------------
    airflow_port: int = setting("LAKEHOUSE_AIRFLOW_PORT", "Airflow api-server port", 8080)
    airflow_api_workers: int = setting(
        "LAKEHOUSE_AIRFLOW_API_WORKERS",
        "uvicorn worker processes of the local api-server (one Python process "
        "runs on one core: the rate at which it creates DAG runs scales with the cores, not beyond)",
        2,
        ge=1,
    )
    airflow_url: Annotated[str, AfterValidator(lambda url: url.rstrip("/"))] = setting(
        "LAKEHOUSE_AIRFLOW_URL",
        "Airflow base URL (MWAA or remote)",
        derived=lambda s: f"http://127.0.0.1:{s['airflow_port']}",
        shown="`http://127.0.0.1:$LAKEHOUSE_AIRFLOW_PORT`",
    )
    airflow_username: str = setting("LAKEHOUSE_AIRFLOW_USERNAME", "Airflow login", "admin")
    given_airflow_password: str | None = setting(
        "LAKEHOUSE_AIRFLOW_PASSWORD", "Airflow password", shown=_SECRET_FILE, secret=True
    )
    given_jwt_secret: str | None = setting(
        "LAKEHOUSE_AIRFLOW_JWT_SECRET", "key the local api-server signs its JWTs with", shown=_SECRET_FILE, secret=True
    )
    airflow_api: Literal["rest", "mwaa"] = setting(
        "LAKEHOUSE_AIRFLOW_API",
        "how the invoker triggers runs: `rest` (URL + login) or `mwaa` (boto3 `invoke_rest_api`, IAM, no password)",
        "rest",
    )
    mwaa_environment: str | None = setting("LAKEHOUSE_MWAA_ENVIRONMENT", "MWAA environment name (`mwaa` only)")
    # -- the lake and the jobs --------------------------------------------------------------------
    lake_uri: str = setting(
        "LAKEHOUSE_LAKE_URI",
        "root of raw / rejects / Iceberg data",
        derived=lambda s: (s["home"] / "lake").as_uri(),
        shown="`file://$LAKEHOUSE_HOME/lake`",
    )
    catalog_name: str = setting("LAKEHOUSE_CATALOG_NAME", "Iceberg catalog name (Spark and PyIceberg)", "lake")
    templates_uri: str = setting(
        "LAKEHOUSE_TEMPLATES_URI",
        "where template scripts live",
        derived=lambda s: str(s["root"] / "glue_templates"),
        shown="`$LAKEHOUSE_ROOT/glue_templates`",
    )
    jars_dir: Annotated[Path, AfterValidator(_resolved)] = setting(
        "LAKEHOUSE_JARS_DIR",
        "Spark jars (Iceberg, Jackson, JDBC)",
        derived=lambda s: s["root"] / "var" / "jars",
        shown="`$LAKEHOUSE_ROOT/var/jars`",
    )
    iceberg_version: str = setting(
        "LAKEHOUSE_ICEBERG_VERSION",
        "Iceberg Spark runtime of the local Spark: `1.10.2` or `1.9.2` (the SCD2 tests run on both)",
        "1.10.2",
    )
    runner: Literal["local", "glue"] = setting("LAKEHOUSE_RUNNER", "`local` (this machine) or `glue`", "local")
    spark_master: str = setting("LAKEHOUSE_SPARK_MASTER", "Spark master for the local runner", "local[2]")
    spark_driver_memory: str = setting("LAKEHOUSE_SPARK_DRIVER_MEMORY", "driver memory of the local runner", "2g")
    spark_mode: Literal["warm", "submit"] = setting(
        "LAKEHOUSE_SPARK_MODE",
        "`warm`: templates run on the stack's pool of ready Spark drivers; `submit`: `spark-submit` per task",
        "warm",
    )
    spark_drivers: int = setting("LAKEHOUSE_SPARK_DRIVERS", "warm drivers the pool keeps (= runs at once)", 2, ge=1)
    spark_driver_max_runs: int = setting(
        "LAKEHOUSE_SPARK_DRIVER_MAX_RUNS", "runs after which a driver is replaced", 50, ge=1
    )
    spark_driver_max_rss_mb: int = setting(
        "LAKEHOUSE_SPARK_DRIVER_MAX_RSS_MB", "memory (MB) above which a driver is replaced after its run", 4096, ge=256
    )
    # -- AWS ----------------------------------------------------------------------------------------
    glue_role_arn: str | None = setting("LAKEHOUSE_GLUE_ROLE_ARN", "IAM role of generated Glue jobs")
    glue_connections: Annotated[tuple[str, ...], BeforeValidator(_comma_list)] = setting(
        "LAKEHOUSE_GLUE_CONNECTIONS",
        "Glue connections every job gets (a NETWORK one reaches a VPC: the private Redshift warehouse)",
        (),
        shown="(none)",
        kind="names, comma-separated",
    )
    alert_webhook_url: str | None = setting("LAKEHOUSE_ALERT_WEBHOOK_URL", "extra webhook for failure alerts")
    alert_sns_topic_arn: str | None = setting("LAKEHOUSE_ALERT_SNS_TOPIC_ARN", "SNS topic for failure alerts (AWS)")
    aws_region: str = setting("AWS_DEFAULT_REGION", "region of the AWS path", "us-east-1")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments and the environment only: no ``.env`` file or secrets folder is ever read, and
        skipping those sources halves the cost of a :func:`load_settings` call (made per use)."""
        return init_settings, env_settings

    # -- derived locations -------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def tmp_dir(self) -> Path:
        """Temporary files of every process of the stack (``TMPDIR``, the JVMs' ``java.io.tmpdir``,
        Spark's local dir): under the home, so a stop leaves nothing in /tmp (``down`` empties it)."""
        return self.run_dir / "tmp"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def dags_folder(self) -> Path:
        return self.root / "dags"

    @property
    def invoker_url(self) -> str:
        return f"http://127.0.0.1:{self.invoker_port}"

    @property
    def catalog_warehouse_uri(self) -> str:
        return f"{self.lake_uri.rstrip('/')}/warehouse"

    # -- DSNs ----------------------------------------------------------------------------------
    def dsn(self, database: str, driver: str = "postgresql") -> str:
        user = quote(self.pg_user, safe="")
        password = quote(self.pg_password, safe="")
        return f"{driver}://{user}:{password}@{self.pg_host}:{self.pg_port}/{database}"

    def jdbc_url(self, database: str) -> str:
        return f"jdbc:postgresql://{self.pg_host}:{self.pg_port}/{database}"

    @property
    def metadata_dsn(self) -> str:
        return self.given_metadata_dsn or self.dsn(self.metadata_db)

    @property
    def warehouse_dsn(self) -> str:
        return self.given_warehouse_dsn or self.dsn(self.warehouse_db)

    @property
    def catalog_dsn(self) -> str:
        """SQLAlchemy URL PyIceberg's ``SqlCatalog`` takes for the same catalog Spark writes."""
        return self.given_catalog_dsn or self.dsn(self.catalog_db, "postgresql+psycopg2")

    @property
    def airflow_sql_alchemy_conn(self) -> str:
        return self.dsn(self.airflow_db, "postgresql+psycopg2")

    # -- secrets -------------------------------------------------------------------------------
    def secret(self, name: str) -> str:
        """A stack secret: from the environment if given, else generated once and kept in HOME."""
        given = {
            "airflow_password": self.given_airflow_password,
            "invoker_token": self.given_invoker_token,
            "jwt_secret": self.given_jwt_secret,
        }.get(name)
        if given:
            return given
        path = self.home / "secrets.json"
        stored: dict[str, str] = {}
        if path.exists():
            stored = json.loads(path.read_text())
        if name not in stored:
            stored[name] = secrets.token_urlsafe(24)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored, indent=2))
            tmp.chmod(0o600)
            tmp.replace(path)
        return stored[name]

    @property
    def airflow_password(self) -> str:
        return self.secret("airflow_password")

    @property
    def invoker_token(self) -> str:
        return self.secret("invoker_token")

    def info(self) -> dict[str, Any]:
        """Endpoints and credentials of the stack, as ``lakehouse info --json`` prints them."""
        return {
            "airflow": {
                "url": self.airflow_url,
                "username": self.airflow_username,
                "password": self.airflow_password,
            },
            "s3": {
                "endpoint_url": self.s3_endpoint_url,
                "access_key_id": self.s3_access_key_id,
                "secret_access_key": self.s3_secret_access_key,
                "landing_bucket": self.landing_bucket,
            },
            "metadata_dsn": self.metadata_dsn,
            "warehouse_dsn": self.warehouse_dsn,
            "catalog_dsn": self.catalog_dsn,
            "catalog": {"name": self.catalog_name, "warehouse": self.catalog_warehouse_uri},
            "invoker": {"url": self.invoker_url, "token": self.invoker_token},
            "lake_uri": self.lake_uri,
            "runner": self.runner,
            "home": str(self.home),
        }


def load_settings() -> Settings:
    """Read the environment now; cheap enough to call per use, so tests can change variables.

    A bad value is a one-line ``ValueError`` naming its variable, not pydantic's report.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise ValueError(_explain(exc)) from None


def _variable(field: FieldInfo) -> str:
    return str(field.validation_alias)


def _explain(exc: ValidationError) -> str:
    variables = {name: _variable(field) for name, field in Settings.model_fields.items()}
    messages: list[str] = []
    for error in exc.errors():
        kind = error["type"]
        if kind == "default_factory_not_called":  # a setting it depends on is wrong: reported already
            continue
        where = str(error["loc"][0]) if error["loc"] else "settings"
        name, value, context = variables.get(where, where), error.get("input"), error.get("ctx") or {}
        if kind in ("int_parsing", "int_from_float", "int_type"):
            messages.append(f"{name} must be an integer, got {value!r}")
        elif kind in ("float_parsing", "float_type"):
            messages.append(f"{name} must be a number, got {value!r}")
        elif kind == "greater_than_equal":
            messages.append(f"{name} must be at least {context['ge']:g}, got {value!r}")
        elif kind == "literal_error":
            messages.append(f"{name} must be {context['expected']}, got {value!r}")
        elif kind == "value_error":  # our own validators' messages name the variable already
            messages.append(str(context.get("error", error["msg"])))
        else:
            messages.append(f"{name}: {error['msg']}, got {value!r}")
    return "; ".join(messages)


# -- the reference page -----------------------------------------------------------------------------
_PAGE_HEAD = """\
# Configuration

Every process of the stack (the `lakehouse` CLI, the invoker, the Airflow components, the Spark
jobs' runner) reads its settings from these environment variables. An empty variable counts as
unset; a bad value stops the process with one line naming the variable. Secrets without a public
default are generated on first use into `$LAKEHOUSE_HOME/secrets.json` (mode 0600) unless given.

<!-- Generated from the declarations in plugins/lakehouse/config.py by
     `.venv/bin/lakehouse docs config > docs/configuration.md`; a test fails when it differs. -->

| Variable | Type | Default | Meaning |
| --- | --- | --- | --- |
"""


def _type_text(field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "kind" in extra:
        return str(extra["kind"])
    annotation: Any = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return " or ".join(f"`{a}`" for a in get_args(annotation))
    text = {int: "integer", float: "number", str: "string", bool: "boolean", Path: "path"}.get(annotation, "string")
    minimum = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
    return f"{text} ≥ {minimum:g}" if minimum is not None else text


def _default_text(field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "shown" in extra:
        return str(extra["shown"])
    default = field.default
    if default is None:
        return "(none)"
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


def settings_reference_markdown() -> str:
    """``docs/configuration.md``: one row per declared setting, in declaration order."""
    rows = [
        "| "
        + " | ".join(
            cell.replace("|", "\\|")
            for cell in (f"`{_variable(field)}`", _type_text(field), _default_text(field), field.description or "")
        )
        + " |"
        for field in Settings.model_fields.values()
    ]
    return _PAGE_HEAD + "\n".join(rows) + "\n"
