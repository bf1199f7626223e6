"""The production shape of the lakehouse on AWS as one CDK stack.

What it creates and why (the README's "Deploy to AWS" section lists costs and permissions):

* three S3 buckets of the seed: **landing** (objects expire after 1 day, as in the invoice
  case), **lake** (raw/rejects/Iceberg under ``lake/``), **templates** (Glue scripts and
  ``lakehouse_jobs.zip``), plus MWAA's **source** bucket (``dags/``, ``plugins.zip``,
  ``requirements.txt``, ``startup.sh``). The artifacts of ``deploy/package.py`` are uploaded by
  the stack itself, so MWAA never starts against an empty bucket;
* the **invoker Lambda** on the landing bucket's ``ObjectCreated`` notifications, the
  **scheduled Lambda** on an EventBridge rule that passes ``{"flow_id": ..., "time": ...}`` and
  the **retry Lambda** (every minute) for file triggers left pending while Airflow was down;
  all three start DAG runs through ``mwaa.invoke_rest_api`` (``LAKEHOUSE_AIRFLOW_API=mwaa``);
* **MWAA** running the DAG factory with ``LAKEHOUSE_RUNNER=glue``;
* the **Glue job role**, least privilege: only the template/lake/landing prefixes it reads or
  writes, the Glue Data Catalog databases of the lake, its own log groups, the warehouse secret;
* **RDS for PostgreSQL** (metadata) and **Redshift Serverless** (warehouse) in private subnets;
* an **SNS topic** for failure alerts; **Secrets Manager** secrets for the RDS login and the
  Redshift login (in the shape ``presentation_to_warehouse``'s ``secret_id`` reads);
* the **metadata admin Lambda** (inside the VPC, like RDS): a custom resource runs it on every
  deployment that changes ``metadata/migrations``, and operators invoke it with ``{"sql": ...}``
  to load flow rows.

The stack is environment-agnostic (account and region are CloudFormation pseudo parameters), so
``cdk synth`` needs no AWS credentials and no network: tests synthesise it offline.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import (
    Aws,
    CfnOutput,
    CustomResource,
    Duration,
    Fn,
    RemovalPolicy,
    Stack,
)
from aws_cdk import (
    aws_ec2 as ec2,
)
from aws_cdk import (
    aws_events as events,
)
from aws_cdk import (
    aws_events_targets as targets,
)
from aws_cdk import (
    aws_glue as glue,
)
from aws_cdk import (
    aws_iam as iam,
)
from aws_cdk import (
    aws_lambda as lambda_,
)
from aws_cdk import (
    aws_logs as logs,
)
from aws_cdk import (
    aws_mwaa as mwaa,
)
from aws_cdk import (
    aws_rds as rds,
)
from aws_cdk import (
    aws_redshiftserverless as redshift,
)
from aws_cdk import (
    aws_s3 as s3,
)
from aws_cdk import (
    aws_s3_deployment as s3deploy,
)
from aws_cdk import (
    aws_s3_notifications as s3n,
)
from aws_cdk import (
    aws_secretsmanager as secretsmanager,
)
from aws_cdk import (
    aws_sns as sns,
)
from aws_cdk import (
    aws_ssm as ssm,
)
from aws_cdk import (
    custom_resources as cr,
)
from constructs import Construct

__all__ = ["LakehouseProps", "LakehouseStack"]


@dataclass(frozen=True)
class LakehouseProps:
    """Everything a deployment may choose; defaults are the smallest sensible production shape."""

    dist_dir: Path
    schedule_flow_id: str = "invoices"
    schedule_expression: str = "cron(0 6 * * ? *)"
    airflow_version: str = "3.0.6"
    mwaa_environment_name: str = "lakehouse"
    mwaa_environment_class: str = "mw1.small"
    mwaa_webserver_access: str = "PUBLIC_ONLY"
    settings_parameter: str = "/lakehouse/settings"
    lake_databases: tuple[str, ...] = ("stage", "presentation")
    rds_instance_type: str = "t4g.micro"
    redshift_base_rpu: int = 8
    alert_email: str | None = None


class LakehouseStack(Stack):
    """One stack: storage, compute, orchestration, metadata, warehouse, alerts, secrets."""

    def __init__(self, scope: Construct, construct_id: str, props: LakehouseProps, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.props = props
        self.mwaa_name = props.mwaa_environment_name
        for artifact in ("templates/lakehouse_jobs.zip", "mwaa/plugins.zip", "lambda/invoker.zip"):
            if not (props.dist_dir / artifact).is_file():
                raise FileNotFoundError(f"{props.dist_dir / artifact} missing: run `make package` first")

        self._network()
        self._buckets()
        self._secrets_and_databases()
        self.alerts = sns.Topic(self, "Alerts", display_name="lakehouse task failures", enforce_ssl=True)
        if props.alert_email:
            sns.Subscription(
                self,
                "AlertEmail",
                topic=self.alerts,
                protocol=sns.SubscriptionProtocol.EMAIL,
                endpoint=props.alert_email,
            )
        self._glue()
        self._settings()
        self._mwaa()
        self._lambdas()
        self._metadata_schema()
        self._outputs()

    # ------------------------------------------------------------------------------------------
    @property
    def availability_zones(self) -> list[str]:
        """Three AZs without a lookup: Redshift Serverless needs subnets in three AZs, and an
        environment-agnostic stack would otherwise get only two."""
        return [Fn.select(i, Fn.get_azs()) for i in range(3)]

    def _network(self) -> None:
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=3,
            nat_gateways=1,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22),
            ],
            gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
        )
        self.private = self.vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.lambda_sg = ec2.SecurityGroup(self, "InvokerSg", vpc=self.vpc, description="invoker Lambdas")
        self.mwaa_sg = ec2.SecurityGroup(self, "MwaaSg", vpc=self.vpc, description="MWAA environment")
        # MWAA's components talk to each other inside this group (documented requirement)
        self.mwaa_sg.add_ingress_rule(self.mwaa_sg, ec2.Port.all_traffic(), "MWAA components")
        self.glue_sg = ec2.SecurityGroup(self, "GlueSg", vpc=self.vpc, description="Glue jobs reaching the warehouse")
        # Glue connections require a self-referencing rule for all TCP (documented requirement)
        self.glue_sg.add_ingress_rule(self.glue_sg, ec2.Port.all_tcp(), "Glue workers")
        self.db_sg = ec2.SecurityGroup(
            self, "MetadataDbSg", vpc=self.vpc, allow_all_outbound=False, description="RDS metadata database"
        )
        self.redshift_sg = ec2.SecurityGroup(
            self, "WarehouseSg", vpc=self.vpc, allow_all_outbound=False, description="Redshift Serverless workgroup"
        )
        for source, who in ((self.lambda_sg, "invoker"), (self.mwaa_sg, "MWAA")):
            self.db_sg.add_ingress_rule(source, ec2.Port.tcp(5432), f"metadata from {who}")
        self.redshift_sg.add_ingress_rule(self.glue_sg, ec2.Port.tcp(5439), "warehouse load from Glue")

    def _bucket(self, construct_id: str, **kwargs: object) -> s3.Bucket:
        return s3.Bucket(
            self,
            construct_id,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            removal_policy=RemovalPolicy.RETAIN,
            **kwargs,
        )

    def _buckets(self) -> None:
        # the invoice case: "a policy to auto delete any content that is more than 1 day old"
        self.landing = self._bucket(
            "Landing",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-after-one-day",
                    expiration=Duration.days(1),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )
        self.lake = self._bucket("Lake", versioned=False)
        self.templates = self._bucket("Templates", versioned=True)
        # MWAA requires a versioned source bucket whose name starts with "airflow-"
        self.source = self._bucket(
            "MwaaSource", versioned=True, bucket_name=Fn.join("-", ["airflow", "lakehouse", Aws.ACCOUNT_ID, Aws.REGION])
        )
        dist = self.props.dist_dir
        self.templates_upload = s3deploy.BucketDeployment(
            self,
            "UploadTemplates",
            destination_bucket=self.templates,
            sources=[s3deploy.Source.asset(str(dist / "templates"))],
            prune=False,
        )
        self.mwaa_upload = s3deploy.BucketDeployment(
            self,
            "UploadMwaa",
            destination_bucket=self.source,
            sources=[s3deploy.Source.asset(str(dist / "mwaa"))],
            prune=False,
        )

    def _secrets_and_databases(self) -> None:
        self.db = rds.DatabaseInstance(
            self,
            "MetadataDb",
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16_9),
            instance_type=ec2.InstanceType(self.props.rds_instance_type),
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[self.db_sg],
            publicly_accessible=False,
            credentials=rds.Credentials.from_generated_secret("lakehouse", secret_name="lakehouse/metadata-db"),
            database_name="lakehouse",
            allocated_storage=20,
            max_allocated_storage=100,
            storage_type=rds.StorageType.GP3,
            storage_encrypted=True,
            multi_az=False,
            backup_retention=Duration.days(7),
            deletion_protection=True,
            removal_policy=RemovalPolicy.SNAPSHOT,
            auto_minor_version_upgrade=True,
        )
        self.db_secret = self.db.secret
        assert self.db_secret is not None

        workgroup_name = "lakehouse"
        # the workgroup endpoint's host is deterministic, which avoids a secret <-> workgroup cycle
        warehouse_host = Fn.join(".", [workgroup_name, Aws.ACCOUNT_ID, Aws.REGION, "redshift-serverless.amazonaws.com"])
        self.warehouse_secret = secretsmanager.Secret(
            self,
            "WarehouseSecret",
            secret_name="lakehouse/warehouse",
            description="Redshift Serverless admin login in the shape presentation_to_warehouse's secret_id expects",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=Fn.to_json_string(
                    {
                        "engine": "redshift",
                        "host": warehouse_host,
                        "port": 5439,
                        "dbname": "warehouse",
                        "username": "lakehouse_admin",
                    }
                ),
                # Redshift wants upper case, lower case and a digit, and refuses ' " \ / @ and spaces
                generate_string_key="password",
                exclude_punctuation=True,
                require_each_included_type=True,
                password_length=32,
            ),
        )
        namespace = redshift.CfnNamespace(
            self,
            "WarehouseNamespace",
            namespace_name="lakehouse",
            db_name="warehouse",
            admin_username="lakehouse_admin",
            admin_user_password=self.warehouse_secret.secret_value_from_json("password").unsafe_unwrap(),
        )
        self.workgroup = redshift.CfnWorkgroup(
            self,
            "WarehouseWorkgroup",
            workgroup_name=workgroup_name,
            namespace_name=namespace.namespace_name,
            base_capacity=self.props.redshift_base_rpu,
            publicly_accessible=False,
            port=5439,
            subnet_ids=self.private.subnet_ids,
            security_group_ids=[self.redshift_sg.security_group_id],
        )
        self.workgroup.node.add_dependency(namespace)

    def _glue(self) -> None:
        """The role every generated Glue job runs as: nothing beyond what the templates touch."""
        self.glue_role = iam.Role(
            self,
            "GlueJobRole",
            assumed_by=iam.ServicePrincipal("glue.amazonaws.com"),
            description="lakehouse Glue jobs (runners/glue.py)",
        )
        templates_read = iam.PolicyStatement(
            sid="ReadTemplates", actions=["s3:GetObject"], resources=[self.templates.arn_for_objects("*")]
        )
        landing_read = iam.PolicyStatement(
            sid="ReadLandingFiles", actions=["s3:GetObject"], resources=[self.landing.arn_for_objects("*")]
        )
        lake_rw = iam.PolicyStatement(
            sid="ReadWriteLake",
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            resources=[self.lake.arn_for_objects("lake/*")],
        )
        lake_list = iam.PolicyStatement(
            sid="ListLake",
            actions=["s3:ListBucket"],
            resources=[self.lake.bucket_arn],
            conditions={"StringLike": {"s3:prefix": ["lake", "lake/*"]}},
        )
        landing_list = iam.PolicyStatement(
            sid="ListLanding", actions=["s3:ListBucket"], resources=[self.landing.bucket_arn]
        )
        catalog_arn = f"arn:{Aws.PARTITION}:glue:{Aws.REGION}:{Aws.ACCOUNT_ID}"
        catalog = iam.PolicyStatement(
            sid="LakeCatalog",
            actions=[
                "glue:GetDatabase",
                "glue:GetDatabases",
                "glue:GetTable",
                "glue:GetTables",
                "glue:CreateTable",
                "glue:UpdateTable",
                "glue:DeleteTable",
                "glue:GetPartitions",
                "glue:BatchGetPartition",
            ],
            resources=[f"{catalog_arn}:catalog"]
            + [f"{catalog_arn}:database/{db}" for db in self.props.lake_databases]
            + [f"{catalog_arn}:table/{db}/*" for db in self.props.lake_databases],
        )
        job_logs = iam.PolicyStatement(
            sid="JobLogs",
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:/aws-glue/*"],
        )
        metrics = iam.PolicyStatement(
            sid="JobMetrics",
            actions=["cloudwatch:PutMetricData"],
            resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": "Glue"}},
        )
        warehouse_secret = iam.PolicyStatement(
            sid="WarehouseSecret",
            actions=["secretsmanager:GetSecretValue"],
            resources=[self.warehouse_secret.secret_arn],
        )
        for statement in (
            templates_read,
            landing_read,
            landing_list,
            lake_rw,
            lake_list,
            catalog,
            job_logs,
            metrics,
            warehouse_secret,
        ):
            self.glue_role.add_to_policy(statement)
        for db in self.props.lake_databases:
            glue.CfnDatabase(
                self,
                f"LakeDatabase{db.title()}",
                catalog_id=Aws.ACCOUNT_ID,
                database_input=glue.CfnDatabase.DatabaseInputProperty(
                    name=db, location_uri=self.lake.s3_url_for_object(f"lake/warehouse/{db}.db")
                ),
            )
        # A NETWORK connection lets a Glue job reach the private Redshift workgroup: the Glue runner
        # passes it as every job's Connections (LAKEHOUSE_GLUE_CONNECTIONS in settings_env).
        subnet = self.private.subnets[0]
        self.glue_connection = glue.CfnConnection(
            self,
            "WarehouseNetwork",
            catalog_id=Aws.ACCOUNT_ID,
            connection_input=glue.CfnConnection.ConnectionInputProperty(
                name="lakehouse-warehouse-network",
                connection_type="NETWORK",
                physical_connection_requirements=glue.CfnConnection.PhysicalConnectionRequirementsProperty(
                    availability_zone=subnet.availability_zone,
                    subnet_id=subnet.subnet_id,
                    security_group_id_list=[self.glue_sg.security_group_id],
                ),
            ),
        )
        self.glue_role.add_to_policy(
            iam.PolicyStatement(
                sid="WarehouseNetworkConnection",
                actions=["glue:GetConnection"],
                resources=[f"{catalog_arn}:catalog", f"{catalog_arn}:connection/lakehouse-warehouse-network"],
            )
        )
        self.glue_role.add_to_policy(
            iam.PolicyStatement(
                # Glue creates ENIs in the connection's subnet; EC2 offers no resource scoping for Describe*
                sid="JobNetworkInterfaces",
                actions=[
                    "ec2:CreateNetworkInterface",
                    "ec2:DeleteNetworkInterface",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeVpcs",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeVpcEndpoints",
                    "ec2:DescribeRouteTables",
                    "ec2:CreateTags",
                    "ec2:DeleteTags",
                ],
                resources=["*"],
            )
        )

    # -- settings: the LAKEHOUSE_* variables of lakehouse/config.py -----------------------------
    def _settings(self) -> None:
        self.settings_env: dict[str, str] = {
            "LAKEHOUSE_HOME": "/tmp/lakehouse",  # the only writable place on Lambda and MWAA
            "LAKEHOUSE_PG_MANAGED": "0",
            "LAKEHOUSE_PG_HOST": self.db.db_instance_endpoint_address,
            "LAKEHOUSE_PG_PORT": self.db.db_instance_endpoint_port,
            "LAKEHOUSE_PG_USER": "lakehouse",
            "LAKEHOUSE_METADATA_DB": "lakehouse",
            "LAKEHOUSE_LANDING_BUCKET": self.landing.bucket_name,
            "LAKEHOUSE_LAKE_URI": self.lake.s3_url_for_object("lake"),
            "LAKEHOUSE_TEMPLATES_URI": self.templates.s3_url_for_object(""),
            "LAKEHOUSE_CATALOG_NAME": "lake",
            "LAKEHOUSE_RUNNER": "glue",
            "LAKEHOUSE_GLUE_ROLE_ARN": self.glue_role.role_arn,
            # every job gets the NETWORK connection: presentation_to_warehouse reaches Redshift through it
            "LAKEHOUSE_GLUE_CONNECTIONS": "lakehouse-warehouse-network",
            "LAKEHOUSE_ALERT_SNS_TOPIC_ARN": self.alerts.topic_arn,
            # the startup script asks MWAA for its webserver URL (alert log links) by this name
            "LAKEHOUSE_MWAA_ENVIRONMENT": self.mwaa_name,
        }
        #: variables whose value is a key of a secret: resolved at start, never stored in plain text
        self.settings_secrets: dict[str, tuple[secretsmanager.ISecret, str]] = {
            "LAKEHOUSE_PG_PASSWORD": (self.db_secret, "password"),
        }
        self.settings_parameter = ssm.StringParameter(
            self,
            "Settings",
            parameter_name=self.props.settings_parameter,
            description="LAKEHOUSE_* settings read by the MWAA startup script (deploy/package.py)",
            string_value=Fn.to_json_string(
                {
                    "env": self.settings_env,
                    "secrets": {
                        name: [secret.secret_arn, key] for name, (secret, key) in self.settings_secrets.items()
                    },
                }
            ),
        )

    def _mwaa(self) -> None:
        name = self.mwaa_name
        env_arn = f"arn:{Aws.PARTITION}:airflow:{Aws.REGION}:{Aws.ACCOUNT_ID}:environment/{name}"
        role = iam.Role(
            self,
            "MwaaExecutionRole",
            assumed_by=iam.CompositePrincipal(
                iam.ServicePrincipal("airflow.amazonaws.com"), iam.ServicePrincipal("airflow-env.amazonaws.com")
            ),
            description="MWAA execution role: Airflow itself plus the Glue runner",
        )
        statements = [
            iam.PolicyStatement(sid="PublishMetrics", actions=["airflow:PublishMetrics"], resources=[env_arn]),
            # startup.sh: the webserver URL for the log links of failure alerts
            iam.PolicyStatement(sid="OwnEnvironment", actions=["airflow:GetEnvironment"], resources=[env_arn]),
            iam.PolicyStatement(
                sid="ReadSource",
                actions=["s3:GetObject*", "s3:GetBucket*", "s3:List*"],
                resources=[self.source.bucket_arn, self.source.arn_for_objects("*")],
            ),
            iam.PolicyStatement(
                sid="AccountPublicAccessBlock", actions=["s3:GetAccountPublicAccessBlock"], resources=["*"]
            ),
            iam.PolicyStatement(
                sid="AirflowLogs",
                actions=[
                    "logs:CreateLogStream",
                    "logs:CreateLogGroup",
                    "logs:PutLogEvents",
                    "logs:GetLogEvents",
                    "logs:GetLogRecord",
                    "logs:GetLogGroupFields",
                    "logs:GetQueryResults",
                    "logs:DescribeLogGroups",
                ],
                resources=[f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:airflow-{name}-*"],
            ),
            iam.PolicyStatement(
                sid="AirflowMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringLike": {"cloudwatch:namespace": "AmazonMWAA*"}},
            ),
            iam.PolicyStatement(
                sid="CeleryQueue",
                actions=[
                    "sqs:ChangeMessageVisibility",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:GetQueueUrl",
                    "sqs:ReceiveMessage",
                    "sqs:SendMessage",
                ],
                resources=[f"arn:{Aws.PARTITION}:sqs:{Aws.REGION}:*:airflow-celery-*"],
            ),
            iam.PolicyStatement(
                sid="CeleryQueueKey",
                actions=["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey*", "kms:Encrypt"],
                not_resources=[f"arn:{Aws.PARTITION}:kms:*:{Aws.ACCOUNT_ID}:key/*"],
                conditions={"StringLike": {"kms:ViaService": [f"sqs.{Aws.REGION}.amazonaws.com"]}},
            ),
            # the Glue runner: create, start, watch and delete jobs named lakehouse-<flow>-<task>-<id>
            iam.PolicyStatement(
                sid="GlueJobs",
                actions=[
                    "glue:CreateJob",
                    "glue:StartJobRun",
                    "glue:GetJobRun",
                    "glue:GetJobRuns",
                    "glue:DeleteJob",
                    "glue:GetJob",
                    "glue:TagResource",
                    "glue:BatchStopJobRun",
                ],
                resources=[f"arn:{Aws.PARTITION}:glue:{Aws.REGION}:{Aws.ACCOUNT_ID}:job/lakehouse-*"],
            ),
            iam.PolicyStatement(
                sid="PassGlueRole",
                actions=["iam:PassRole"],
                resources=[self.glue_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "glue.amazonaws.com"}},
            ),
            iam.PolicyStatement(
                sid="ReadJobMetrics", actions=["s3:GetObject"], resources=[self.lake.arn_for_objects("lake/_metrics/*")]
            ),
            iam.PolicyStatement(sid="Alerts", actions=["sns:Publish"], resources=[self.alerts.topic_arn]),
            iam.PolicyStatement(
                sid="Settings", actions=["ssm:GetParameter"], resources=[self.settings_parameter.parameter_arn]
            ),
            iam.PolicyStatement(
                sid="SettingsSecrets",
                actions=["secretsmanager:GetSecretValue"],
                resources=[s.secret_arn for s, _ in self.settings_secrets.values()],
            ),
        ]
        for statement in statements:
            role.add_to_policy(statement)
        self.mwaa_role = role

        logging = mwaa.CfnEnvironment.ModuleLoggingConfigurationProperty(enabled=True, log_level="INFO")
        self.mwaa_env = mwaa.CfnEnvironment(
            self,
            "Airflow",
            name=name,
            airflow_version=self.props.airflow_version,
            environment_class=self.props.mwaa_environment_class,
            min_workers=1,
            max_workers=2,
            execution_role_arn=role.role_arn,
            source_bucket_arn=self.source.bucket_arn,
            dag_s3_path="dags",
            plugins_s3_path="plugins.zip",
            requirements_s3_path="requirements.txt",
            startup_script_s3_path="startup.sh",
            webserver_access_mode=self.props.mwaa_webserver_access,
            network_configuration=mwaa.CfnEnvironment.NetworkConfigurationProperty(
                subnet_ids=self.private.subnet_ids[:2], security_group_ids=[self.mwaa_sg.security_group_id]
            ),
            logging_configuration=mwaa.CfnEnvironment.LoggingConfigurationProperty(
                dag_processing_logs=logging,
                scheduler_logs=logging,
                task_logs=logging,
                webserver_logs=mwaa.CfnEnvironment.ModuleLoggingConfigurationProperty(
                    enabled=True, log_level="WARNING"
                ),
                worker_logs=logging,
            ),
            airflow_configuration_options={"core.load_examples": "False", "core.dags_are_paused_at_creation": "False"},
        )
        # MWAA validates dags/, plugins.zip, requirements.txt and startup.sh at creation time
        self.mwaa_env.node.add_dependency(self.mwaa_upload)
        self.mwaa_env.node.add_dependency(self.settings_parameter)
        # the role's policy (not the role: its ARN is referenced already) must exist before MWAA starts
        self.mwaa_env.node.add_dependency(role.node.find_child("DefaultPolicy"))
        self.env_arn = env_arn

    def _lambdas(self) -> None:
        code = lambda_.Code.from_asset(str(self.props.dist_dir / "lambda" / "invoker.zip"))
        environment = dict(self.settings_env)
        environment.update(
            {
                # runs are started through mwaa.invoke_rest_api with the function's IAM role: no
                # network path to the webserver and no Airflow password needed
                "LAKEHOUSE_AIRFLOW_API": "mwaa",
                "LAKEHOUSE_MWAA_ENVIRONMENT": self.mwaa_name,
                "LAKEHOUSE_AIRFLOW_URL": Fn.join("", ["https://", self.mwaa_env.attr_webserver_url]),
                "LAKEHOUSE_INVOKER_DB_POOL": "2",  # one Lambda container handles one event at a time
            }
        )
        # Lambda cannot resolve a secret at start without code in the handler: CloudFormation
        # resolves it at deploy time (dynamic reference), so rotating it needs a redeploy. The
        # secret stays the source of truth and the template holds only the reference.
        secret, key = self.settings_secrets["LAKEHOUSE_PG_PASSWORD"]
        environment["LAKEHOUSE_PG_PASSWORD"] = secret.secret_value_from_json(key).unsafe_unwrap()
        self.lambda_environment = environment
        common = dict(
            code=code,
            runtime=lambda_.Runtime.PYTHON_3_11,
            architecture=lambda_.Architecture.X86_64,
            memory_size=256,
            timeout=Duration.seconds(60),
            environment=environment,
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[self.lambda_sg],
        )
        functions = {}
        for construct_id, handler, description in (
            ("Invoker", "handler", "S3 landing notification -> ledger -> Airflow DAG run"),
            ("ScheduledInvoker", "scheduled_handler", "EventBridge schedule {flow_id} -> Airflow DAG run"),
            ("RetryInvoker", "retry_handler", "retries ledger rows left pending while Airflow was unavailable"),
        ):
            functions[construct_id] = lambda_.Function(
                self,
                construct_id,
                handler=f"lakehouse.invoker.lambda_handler.{handler}",
                description=description,
                log_group=logs.LogGroup(
                    self,
                    f"{construct_id}Logs",
                    retention=logs.RetentionDays.ONE_MONTH,
                    removal_policy=RemovalPolicy.DESTROY,
                ),
                **common,
            )
            # the MWAA "User" Airflow role may trigger DAG runs; nothing else of Airflow is reachable
            functions[construct_id].add_to_role_policy(
                iam.PolicyStatement(
                    sid="TriggerDagRuns",
                    actions=["airflow:InvokeRestApi"],
                    resources=[f"arn:{Aws.PARTITION}:airflow:{Aws.REGION}:{Aws.ACCOUNT_ID}:role/{self.mwaa_name}/User"],
                )
            )
        self.invoker, self.scheduled, self.retrier = (
            functions[k] for k in ("Invoker", "ScheduledInvoker", "RetryInvoker")
        )
        self.landing.add_event_notification(s3.EventType.OBJECT_CREATED, s3n.LambdaDestination(self.invoker))
        self.schedule = events.Rule(
            self,
            "FlowSchedule",
            description=f"start flow {self.props.schedule_flow_id} on a schedule",
            schedule=events.Schedule.expression(self.props.schedule_expression),
            targets=[
                targets.LambdaFunction(
                    self.scheduled,
                    event=events.RuleTargetInput.from_object(
                        {"flow_id": self.props.schedule_flow_id, "time": events.EventField.time}
                    ),
                )
            ],
        )
        events.Rule(
            self,
            "RetrySchedule",
            description="retry pending file triggers",
            schedule=events.Schedule.rate(Duration.minutes(1)),
            targets=[targets.LambdaFunction(self.retrier)],
        )
        self.lambda_common = common

    def _metadata_schema(self) -> None:
        """Migrate the RDS schema during the deployment, and keep the function for operators."""
        # no Airflow in its environment: MWAA waits for this function's work (the webserver URL
        # would be a dependency cycle), and it never talks to Airflow
        environment = {
            k: v
            for k, v in self.lambda_environment.items()
            if k not in ("LAKEHOUSE_AIRFLOW_URL", "LAKEHOUSE_AIRFLOW_API", "LAKEHOUSE_MWAA_ENVIRONMENT")
        }
        common = dict(self.lambda_common, timeout=Duration.minutes(5), environment=environment)
        self.metadata_admin = lambda_.Function(
            self,
            "MetadataAdmin",
            handler="metadata_admin.handler",
            description='lakehouse metadata DB: migrations (custom resource) and operator SQL ({"sql": ...})',
            log_group=logs.LogGroup(
                self, "MetadataAdminLogs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
            ),
            **common,
        )
        provider = cr.Provider(self, "MetadataSchemaProvider", on_event_handler=self.metadata_admin)
        self.metadata_schema = CustomResource(
            self,
            "MetadataSchema",
            service_token=provider.service_token,
            resource_type="Custom::LakehouseMetadataSchema",
            # a new value (changed migrations in the zip) is an Update: the handler migrates again
            properties={"MigrationsHash": self.migrations_hash()},
        )
        # DAGs are parsed from the metadata tables: they exist before MWAA's scheduler starts
        self.mwaa_env.node.add_dependency(self.metadata_schema)

    def migrations_hash(self) -> str:
        """Digest of the migrations inside the Lambda zip (what the handler will apply)."""
        digest = hashlib.sha256()
        with zipfile.ZipFile(self.props.dist_dir / "lambda" / "invoker.zip") as archive:
            names = sorted(n for n in archive.namelist() if n.startswith("migrations/"))
            if not names:
                raise FileNotFoundError("invoker.zip has no migrations/: rebuild it with `make package`")
            for name in names:
                digest.update(name.encode() + b"\0" + archive.read(name))
        return digest.hexdigest()

    def _outputs(self) -> None:
        outputs = {
            "LandingBucket": self.landing.bucket_name,
            "LakeUri": self.settings_env["LAKEHOUSE_LAKE_URI"],
            "TemplatesUri": self.settings_env["LAKEHOUSE_TEMPLATES_URI"],
            "MwaaSourceBucket": self.source.bucket_name,
            "GlueRoleArn": self.glue_role.role_arn,
            "GlueWarehouseConnection": "lakehouse-warehouse-network",
            "WarehouseWorkgroupName": self.workgroup.workgroup_name,
            "AlertTopicArn": self.alerts.topic_arn,
            "MetadataDbEndpoint": self.db.db_instance_endpoint_address,
            "MetadataDbSecretArn": self.db_secret.secret_arn,
            "WarehouseSecretArn": self.warehouse_secret.secret_arn,
            "MwaaEnvironment": self.mwaa_name,
            "AirflowUiUrl": Fn.join("", ["https://", self.mwaa_env.attr_webserver_url]),
            "InvokerFunction": self.invoker.function_name,
            "MetadataAdminFunction": self.metadata_admin.function_name,
            "SettingsParameter": self.settings_parameter.parameter_name,
        }
        for key, value in outputs.items():
            CfnOutput(self, key, value=value)
