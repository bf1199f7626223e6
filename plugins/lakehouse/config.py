"""The one home of configuration: every setting is an environment variable with a documented default.

Every process of the stack (CLI, invoker, Airflow components, spark-submit) is started with the
same environment, so reading it here once gives all of them the same view. Secrets that must not
have a public default (Airflow's password, the JWT key, the webhook token) are generated on first
use into ``$LAKEHOUSE_HOME/secrets.json`` (mode 0600) unless given as variables.

=================================  ==========================================  =====================
Variable                           Meaning                                     Default
=================================  ==========================================  =====================
LAKEHOUSE_ROOT                     the checkout (dags/, glue_templates/ ...)   two levels above this package
LAKEHOUSE_HOME                     runtime state: data, logs, pids, secrets    ``$LAKEHOUSE_ROOT/var``
LAKEHOUSE_PG_HOST / _PORT          the Postgres server of the stack            127.0.0.1 / 5433
LAKEHOUSE_PG_USER / _PASSWORD      its login                                   lakehouse / lakehouse
LAKEHOUSE_PG_MANAGED               1: the stack runs its own Postgres cluster  1
LAKEHOUSE_METADATA_DB              flows, templates, ledger, audit             lakehouse
LAKEHOUSE_AIRFLOW_DB               Airflow's own database                      airflow
LAKEHOUSE_CATALOG_DB               the Iceberg JDBC catalog                    iceberg_catalog
LAKEHOUSE_WAREHOUSE_DB             the local warehouse                         warehouse
LAKEHOUSE_S3_ENDPOINT_URL          S3 API of the landing store                 http://127.0.0.1:8333
LAKEHOUSE_S3_ACCESS_KEY_ID         S3 access key                               lakehouse
LAKEHOUSE_S3_SECRET_ACCESS_KEY     S3 secret key                               lakehouse-secret
LAKEHOUSE_LANDING_BUCKET           the bucket files are dropped into           landing
LAKEHOUSE_SEAWEED_PORTS            master,volume,filer,s3,webdav,iceberg       9333,9340,8888,8333,7333,8181
LAKEHOUSE_INVOKER_PORT             the invoker's webhook port                  8765
LAKEHOUSE_INVOKER_BIND             address the invoker listens on              127.0.0.1
LAKEHOUSE_INVOKER_TOKEN            webhook secret: bearer token, or HMAC key   generated
                                   of ``X-Lakehouse-Signature: sha256=<hex>``
LAKEHOUSE_INVOKER_RETRY_BASE       first retry delay (s) of a pending trigger; 2
                                   doubles per attempt
LAKEHOUSE_INVOKER_RETRY_MAX        longest retry delay (s)                     300
LAKEHOUSE_INVOKER_DB_POOL          Postgres connections the invoker keeps      8
LAKEHOUSE_INVOKER_WORKERS          threads calling Airflow after the webhook   8
                                   answered; 0 = call inside the request
LAKEHOUSE_INVOKER_LEASE            seconds a row being triggered is held       30
                                   before the retry loop may take it over
LAKEHOUSE_INVOKER_CATALOGUE_TTL    seconds the invoker caches the flows        5
LAKEHOUSE_RECONCILE_INTERVAL       seconds between the invoker's sweeps of     900
                                   each file-triggered flow's prefix (files
                                   no event announced); 0: off
LAKEHOUSE_AIRFLOW_PORT             Airflow api-server port                     8080
LAKEHOUSE_AIRFLOW_API_WORKERS      uvicorn worker processes of the local       2
                                   api-server (one Python process runs on one
                                   core: the rate at which it creates DAG
                                   runs scales with the cores, not beyond)
LAKEHOUSE_AIRFLOW_URL              Airflow base URL (MWAA or remote)           http://127.0.0.1:$PORT
LAKEHOUSE_AIRFLOW_USERNAME         Airflow login                               admin
LAKEHOUSE_AIRFLOW_PASSWORD         Airflow password                            generated
LAKEHOUSE_AIRFLOW_API              how the invoker triggers runs: ``rest``     rest
                                   (URL + login) or ``mwaa`` (boto3
                                   ``invoke_rest_api``, IAM, no password)
LAKEHOUSE_MWAA_ENVIRONMENT         MWAA environment name (``mwaa`` only)       (none)
LAKEHOUSE_LAKE_URI                 root of raw / rejects / Iceberg data        file://$LAKEHOUSE_HOME/lake
LAKEHOUSE_CATALOG_NAME             Iceberg catalog name (Spark and PyIceberg)  lake
LAKEHOUSE_TEMPLATES_URI            where template scripts live                 $LAKEHOUSE_ROOT/glue_templates
LAKEHOUSE_JARS_DIR                 Spark jars (Iceberg, Jackson, JDBC)         $LAKEHOUSE_ROOT/var/jars
LAKEHOUSE_RUNNER                   ``local`` (this machine) or ``glue``        local
LAKEHOUSE_SPARK_MASTER             Spark master for the local runner           local[2]
LAKEHOUSE_SPARK_DRIVER_MEMORY      driver memory of the local runner           2g
LAKEHOUSE_SPARK_MODE               ``warm``: templates run on the stack's      warm
                                   pool of ready Spark drivers; ``submit``:
                                   ``spark-submit`` per task
LAKEHOUSE_SPARK_DRIVERS            warm drivers the pool keeps (= runs at      2
                                   once)
LAKEHOUSE_SPARK_DRIVER_MAX_RUNS    runs after which a driver is replaced       50
LAKEHOUSE_SPARK_DRIVER_MAX_RSS_MB  memory (MB) above which a driver is         4096
                                   replaced after its run
LAKEHOUSE_GLUE_ROLE_ARN            IAM role of generated Glue jobs             (none)
LAKEHOUSE_GLUE_CONNECTIONS         Glue connections every job gets, comma-     (none)
                                   separated (a NETWORK one reaches a VPC:
                                   the private Redshift warehouse)
LAKEHOUSE_ALERT_WEBHOOK_URL        extra webhook for failure alerts            (none)
LAKEHOUSE_ALERT_SNS_TOPIC_ARN      SNS topic for failure alerts (AWS)          (none)
AWS_DEFAULT_REGION                 region of the AWS path                      us-east-1
=================================  ==========================================  =====================
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["Settings", "load_settings"]

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _number(name: str, default: str, kind: type[int] | type[float], minimum: float = 0) -> Any:
    """A numeric setting; a bad value is an error naming the variable, not a bare ``ValueError``."""
    text = _env(name, default)
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, got {text!r}")
    return value


@dataclass(frozen=True)
class SeaweedPorts:
    master: int
    volume: int
    filer: int
    s3: int
    webdav: int
    iceberg: int

    @classmethod
    def parse(cls, text: str) -> "SeaweedPorts":
        parts = [int(p) for p in text.split(",")]
        if len(parts) != 6:
            raise ValueError(
                f"LAKEHOUSE_SEAWEED_PORTS needs 6 ports (master,volume,filer,s3,webdav,iceberg), got {text!r}"
            )
        return cls(*parts)


@dataclass(frozen=True)
class Settings:
    """A snapshot of the configuration, taken from the environment by :func:`load_settings`."""

    root: Path
    home: Path
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str
    pg_managed: bool
    metadata_db: str
    airflow_db: str
    catalog_db: str
    warehouse_db: str
    s3_endpoint_url: str
    s3_access_key_id: str
    s3_secret_access_key: str
    landing_bucket: str
    seaweed_ports: SeaweedPorts
    invoker_port: int
    invoker_bind: str
    airflow_port: int
    airflow_url: str
    airflow_username: str
    lake_uri: str
    catalog_name: str
    templates_uri: str
    jars_dir: Path
    runner: str
    spark_master: str
    spark_driver_memory: str
    glue_role_arn: str | None
    alert_webhook_url: str | None
    alert_sns_topic_arn: str | None
    aws_region: str
    airflow_api: str = "rest"
    mwaa_environment: str | None = None
    invoker_retry_base: float = 2.0
    invoker_retry_max: float = 300.0
    invoker_db_pool: int = 8
    invoker_catalogue_ttl: float = 5.0
    invoker_dispatch_workers: int = 8
    invoker_lease: float = 30.0
    reconcile_interval: float = 900.0
    airflow_api_workers: int = 2
    glue_connections: tuple[str, ...] = ()
    spark_mode: str = "warm"
    spark_drivers: int = 2
    spark_driver_max_runs: int = 50
    spark_driver_max_rss_mb: int = 4096
    _explicit_secrets: dict[str, str] = field(default_factory=dict, repr=False)

    # -- derived locations -------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

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
        return _env("LAKEHOUSE_METADATA_DSN", self.dsn(self.metadata_db))

    @property
    def warehouse_dsn(self) -> str:
        return _env("LAKEHOUSE_WAREHOUSE_DSN", self.dsn(self.warehouse_db))

    @property
    def catalog_dsn(self) -> str:
        """SQLAlchemy URL PyIceberg's ``SqlCatalog`` takes for the same catalog Spark writes."""
        return _env("LAKEHOUSE_CATALOG_DSN", self.dsn(self.catalog_db, "postgresql+psycopg2"))

    @property
    def airflow_sql_alchemy_conn(self) -> str:
        return self.dsn(self.airflow_db, "postgresql+psycopg2")

    # -- secrets -------------------------------------------------------------------------------
    def secret(self, name: str) -> str:
        """A stack secret: from the environment if given, else generated once and kept in HOME."""
        if name in self._explicit_secrets:
            return self._explicit_secrets[name]
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

    def info(self) -> dict[str, object]:
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
    """Read the environment once; cheap enough to call per use, so tests can change variables."""
    root = Path(_env("LAKEHOUSE_ROOT", str(_PACKAGE_ROOT))).resolve()
    home = Path(_env("LAKEHOUSE_HOME", str(root / "var"))).resolve()
    airflow_port = int(_env("LAKEHOUSE_AIRFLOW_PORT", "8080"))
    runner = _env("LAKEHOUSE_RUNNER", "local")
    if runner not in ("local", "glue"):
        raise ValueError(f"LAKEHOUSE_RUNNER must be 'local' or 'glue', got {runner!r}")
    airflow_api = _env("LAKEHOUSE_AIRFLOW_API", "rest")
    if airflow_api not in ("rest", "mwaa"):
        raise ValueError(f"LAKEHOUSE_AIRFLOW_API must be 'rest' or 'mwaa', got {airflow_api!r}")
    spark_mode = _env("LAKEHOUSE_SPARK_MODE", "warm")
    if spark_mode not in ("warm", "submit"):
        raise ValueError(f"LAKEHOUSE_SPARK_MODE must be 'warm' or 'submit', got {spark_mode!r}")
    explicit = {
        key: os.environ[var]
        for key, var in (
            ("airflow_password", "LAKEHOUSE_AIRFLOW_PASSWORD"),
            ("invoker_token", "LAKEHOUSE_INVOKER_TOKEN"),
            ("jwt_secret", "LAKEHOUSE_AIRFLOW_JWT_SECRET"),
        )
        if os.environ.get(var)
    }
    return Settings(
        root=root,
        home=home,
        pg_host=_env("LAKEHOUSE_PG_HOST", "127.0.0.1"),
        pg_port=int(_env("LAKEHOUSE_PG_PORT", "5433")),
        pg_user=_env("LAKEHOUSE_PG_USER", "lakehouse"),
        pg_password=_env("LAKEHOUSE_PG_PASSWORD", "lakehouse"),
        pg_managed=_env("LAKEHOUSE_PG_MANAGED", "1") == "1",
        metadata_db=_env("LAKEHOUSE_METADATA_DB", "lakehouse"),
        airflow_db=_env("LAKEHOUSE_AIRFLOW_DB", "airflow"),
        catalog_db=_env("LAKEHOUSE_CATALOG_DB", "iceberg_catalog"),
        warehouse_db=_env("LAKEHOUSE_WAREHOUSE_DB", "warehouse"),
        s3_endpoint_url=_env("LAKEHOUSE_S3_ENDPOINT_URL", "http://127.0.0.1:8333"),
        s3_access_key_id=_env("LAKEHOUSE_S3_ACCESS_KEY_ID", "lakehouse"),
        s3_secret_access_key=_env("LAKEHOUSE_S3_SECRET_ACCESS_KEY", "lakehouse-secret"),
        landing_bucket=_env("LAKEHOUSE_LANDING_BUCKET", "landing"),
        seaweed_ports=SeaweedPorts.parse(_env("LAKEHOUSE_SEAWEED_PORTS", "9333,9340,8888,8333,7333,8181")),
        invoker_port=int(_env("LAKEHOUSE_INVOKER_PORT", "8765")),
        invoker_bind=_env("LAKEHOUSE_INVOKER_BIND", "127.0.0.1"),
        airflow_port=airflow_port,
        airflow_url=_env("LAKEHOUSE_AIRFLOW_URL", f"http://127.0.0.1:{airflow_port}").rstrip("/"),
        airflow_username=_env("LAKEHOUSE_AIRFLOW_USERNAME", "admin"),
        lake_uri=_env("LAKEHOUSE_LAKE_URI", (home / "lake").as_uri()),
        catalog_name=_env("LAKEHOUSE_CATALOG_NAME", "lake"),
        templates_uri=_env("LAKEHOUSE_TEMPLATES_URI", str(root / "glue_templates")),
        jars_dir=Path(_env("LAKEHOUSE_JARS_DIR", str(root / "var" / "jars"))).resolve(),
        runner=runner,
        spark_master=_env("LAKEHOUSE_SPARK_MASTER", "local[2]"),
        spark_driver_memory=_env("LAKEHOUSE_SPARK_DRIVER_MEMORY", "2g"),
        spark_mode=spark_mode,
        spark_drivers=_number("LAKEHOUSE_SPARK_DRIVERS", "2", int, minimum=1),
        spark_driver_max_runs=_number("LAKEHOUSE_SPARK_DRIVER_MAX_RUNS", "50", int, minimum=1),
        spark_driver_max_rss_mb=_number("LAKEHOUSE_SPARK_DRIVER_MAX_RSS_MB", "4096", int, minimum=256),
        glue_role_arn=os.environ.get("LAKEHOUSE_GLUE_ROLE_ARN") or None,
        glue_connections=tuple(c.strip() for c in os.environ.get("LAKEHOUSE_GLUE_CONNECTIONS", "").split(",")
                               if c.strip()),
        alert_webhook_url=os.environ.get("LAKEHOUSE_ALERT_WEBHOOK_URL") or None,
        alert_sns_topic_arn=os.environ.get("LAKEHOUSE_ALERT_SNS_TOPIC_ARN") or None,
        aws_region=_env("AWS_DEFAULT_REGION", "us-east-1"),
        airflow_api=airflow_api,
        mwaa_environment=os.environ.get("LAKEHOUSE_MWAA_ENVIRONMENT") or None,
        invoker_retry_base=_number("LAKEHOUSE_INVOKER_RETRY_BASE", "2", float),
        invoker_retry_max=_number("LAKEHOUSE_INVOKER_RETRY_MAX", "300", float),
        invoker_db_pool=_number("LAKEHOUSE_INVOKER_DB_POOL", "8", int),
        invoker_catalogue_ttl=_number("LAKEHOUSE_INVOKER_CATALOGUE_TTL", "5", float),
        invoker_dispatch_workers=_number("LAKEHOUSE_INVOKER_WORKERS", "8", int),
        invoker_lease=_number("LAKEHOUSE_INVOKER_LEASE", "30", float, minimum=1),
        reconcile_interval=_number("LAKEHOUSE_RECONCILE_INTERVAL", "900", float),
        airflow_api_workers=_number("LAKEHOUSE_AIRFLOW_API_WORKERS", "2", int, minimum=1),
        _explicit_secrets=explicit,
    )
