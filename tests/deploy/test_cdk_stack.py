"""The CDK app synthesises offline, the template has the production shape, and cfn-lint passes.

`cdk synth` runs the real CLI (deploy/aws/node_modules, pinned by deploy/aws/package-lock.json)
against the real app with the artifacts deploy/package.py built: no AWS account, no network,
no Docker (the Lambda code is a prebuilt zip, nothing is bundled).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lakehouse.config
import lakehouse.invoker.lambda_handler as lambda_handler

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "deploy" / "aws"
CDK = APP / "node_modules" / ".bin" / "cdk"
CFN_LINT = Path(sys.executable).with_name("cfn-lint")
#: cfn-lint findings accepted, with why. W3005 "DependsOn already enforced by GetAtt": CDK adds
#: DependsOn on a Lambda's service role next to the GetAtt of its ARN, so the role's *policy*
#: (same DependsOn list) exists before the function; harmless and not ours to change.
ALLOWED_FINDINGS = {"W3005"}


def test_the_cdk_cli_is_installed() -> None:
    """`make setup` installs it (`npm ci --prefix deploy/aws`); a missing CLI fails, never skips."""
    assert shutil.which("node"), "node is not installed: deploy/prerequisites.sh lists it (apt-get install nodejs npm)"
    assert CDK.exists() and os.access(CDK, os.X_OK), f"{CDK} missing: run `make setup` (npm ci --prefix deploy/aws)"
    lock = json.loads((APP / "package-lock.json").read_text())
    installed = json.loads((APP / "node_modules" / "aws-cdk" / "package.json").read_text())["version"]
    assert installed == lock["packages"]["node_modules/aws-cdk"]["version"], (
        "node_modules differs from the lock: make setup"
    )


@pytest.fixture(scope="module")
def cdk_out(tmp_path_factory: pytest.TempPathFactory, dist: Path) -> Path:
    test_the_cdk_cli_is_installed()
    out = tmp_path_factory.mktemp("cdk.out")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env.update({"CDK_DISABLE_VERSION_CHECK": "1", "AWS_EC2_METADATA_DISABLED": "true"})
    result = subprocess.run(
        [
            str(CDK),
            "synth",
            "--quiet",
            "--no-notices",
            "--no-version-reporting",
            "--output",
            str(out),
            "-c",
            f"dist_dir={dist}",
            "-c",
            "schedule_flow_id=orders",
            "-c",
            "schedule_expression=cron(15 4 * * ? *)",
            "-c",
            "lake_databases=stage,presentation,sales",
        ],
        cwd=APP,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def template(cdk_out: Path) -> dict[str, Any]:
    return json.loads((cdk_out / "Lakehouse.template.json").read_text())


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def only(template: dict[str, Any], kind: str, prefix: str = "") -> tuple[str, dict[str, Any]]:
    found = [(k, v) for k, v in resources(template, kind).items() if k.startswith(prefix)]
    assert len(found) == 1, f"expected one {kind} {prefix!r}, got {[k for k, _ in found]}"
    return found[0]


def statements(template: dict[str, Any], role_id: str) -> Iterator[dict[str, Any]]:
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            yield from policy["Properties"]["PolicyDocument"]["Statement"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_landing_bucket_expires_objects_after_one_day(template: dict[str, Any]) -> None:
    _, landing = only(template, "AWS::S3::Bucket", "Landing")
    rules = landing["Properties"]["LifecycleConfiguration"]["Rules"]
    assert [r["ExpirationInDays"] for r in rules if r["Status"] == "Enabled"] == [1]
    buckets = resources(template, "AWS::S3::Bucket")
    assert {k.rstrip("0123456789ABCDEF") for k in buckets} >= {"Landing", "Lake", "Templates", "MwaaSource"}
    for bucket in buckets.values():
        assert bucket["Properties"]["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True


def test_landing_notifications_invoke_the_invoker(template: dict[str, Any]) -> None:
    landing_id, _ = only(template, "AWS::S3::Bucket", "Landing")
    invoker_id, invoker = only(template, "AWS::Lambda::Function", "Invoker")
    assert invoker["Properties"]["Handler"] == "lakehouse.invoker.lambda_handler.handler"
    _, notifications = only(template, "Custom::S3BucketNotifications")
    assert notifications["Properties"]["BucketName"] == {"Ref": landing_id}
    [config] = notifications["Properties"]["NotificationConfiguration"]["LambdaFunctionConfigurations"]
    assert config["Events"] == ["s3:ObjectCreated:*"]
    assert config["LambdaFunctionArn"] == {"Fn::GetAtt": [invoker_id, "Arn"]}
    permission = [
        p["Properties"]
        for p in resources(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "s3.amazonaws.com"
    ]
    assert permission and permission[0]["SourceArn"] == {"Fn::GetAtt": [landing_id, "Arn"]}


def test_every_handler_exists_and_env_uses_config_names(template: dict[str, Any]) -> None:
    config_source = Path(lakehouse.config.__file__).read_text()
    known = set(re.findall(r'"(LAKEHOUSE_[A-Z0-9_]+)"', config_source))
    ours = [
        f
        for k, f in resources(template, "AWS::Lambda::Function").items()
        if f["Properties"].get("Handler", "").startswith("lakehouse.")
    ]
    assert len(ours) == 3  # invoker, scheduled invoker, retrier
    for function in ours:
        props = function["Properties"]
        name = props["Handler"].rsplit(".", 1)[1]
        assert callable(getattr(lambda_handler, name, None)), f"lambda_handler.{name} does not exist"
        assert props["Runtime"] == "python3.11" and props["Architectures"] == ["x86_64"]
        variables = props["Environment"]["Variables"]
        assert set(variables) <= known, f"not read by lakehouse/config.py: {set(variables) - known}"
        assert variables["LAKEHOUSE_RUNNER"] == "glue" and variables["LAKEHOUSE_PG_MANAGED"] == "0"
        assert variables["LAKEHOUSE_AIRFLOW_API"] == "mwaa"
        assert "resolve:secretsmanager" in json.dumps(variables["LAKEHOUSE_PG_PASSWORD"])
        assert "LAKEHOUSE_AIRFLOW_PASSWORD" not in variables  # IAM (invoke_rest_api), no password


def test_schedule_passes_the_flow_id_and_time(template: dict[str, Any]) -> None:
    scheduled_id, _ = only(template, "AWS::Lambda::Function", "ScheduledInvoker")
    rules = [
        r["Properties"]
        for r in resources(template, "AWS::Events::Rule").values()
        if r["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [scheduled_id, "Arn"]}
    ]
    assert len(rules) == 1
    rule = rules[0]
    assert rule["ScheduleExpression"] == "cron(15 4 * * ? *)" and rule["State"] == "ENABLED"
    transformer = rule["Targets"][0]["InputTransformer"]
    assert json.loads(re.sub(r"<(\w+)>", r'"\1"', transformer["InputTemplate"])) == {
        "flow_id": "orders",
        "time": "time",
    }
    assert transformer["InputPathsMap"] == {"time": "$.time"}


def test_glue_role_is_least_privilege(template: dict[str, Any]) -> None:
    role_id, role = only(template, "AWS::IAM::Role", "GlueJobRole")
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "glue.amazonaws.com"
    }
    assert "ManagedPolicyArns" not in role["Properties"]
    bucket_ids = {k for k in resources(template, "AWS::S3::Bucket")}
    found = list(statements(template, role_id))
    s3_statements = [s for s in found if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    assert s3_statements
    for statement in s3_statements:
        assert all(not a.endswith("*") for a in as_list(statement["Action"])), statement
        for resource in as_list(statement["Resource"]):
            assert resource != "*", statement
            text = json.dumps(resource)
            assert any(b in text for b in bucket_ids), f"S3 resource not a stack bucket: {text}"
            assert "MwaaSource" not in text
    lake_write = [s for s in s3_statements if "s3:PutObject" in as_list(s["Action"])]
    assert len(lake_write) == 1 and '"/lake/*"' in json.dumps(lake_write[0]["Resource"])
    star = [s for s in found if "*" in as_list(s["Resource"])]
    assert {a.split(":")[0] for s in star for a in as_list(s["Action"])} <= {"ec2", "cloudwatch"}
    glue = next(s for s in found if s.get("Sid") == "LakeCatalog")
    text = json.dumps(glue["Resource"])
    assert "database/stage" in text and "table/presentation/*" in text and "database/*" not in text
    assert "database/sales" in text  # the lake_databases context value
    databases = {d["Properties"]["DatabaseInput"]["Name"] for d in resources(template, "AWS::Glue::Database").values()}
    assert databases == {"stage", "presentation", "sales"}


def test_mwaa_environment_reads_the_packaged_bundle(template: dict[str, Any]) -> None:
    _, env = only(template, "AWS::MWAA::Environment")
    props = env["Properties"]
    source_id, source = only(template, "AWS::S3::Bucket", "MwaaSource")
    assert props["SourceBucketArn"] == {"Fn::GetAtt": [source_id, "Arn"]}
    assert source["Properties"]["VersioningConfiguration"]["Status"] == "Enabled"
    assert "airflow" in json.dumps(source["Properties"]["BucketName"])  # MWAA's bucket-name rule
    assert (props["DagS3Path"], props["PluginsS3Path"], props["RequirementsS3Path"], props["StartupScriptS3Path"]) == (
        "dags",
        "plugins.zip",
        "requirements.txt",
        "startup.sh",
    )
    assert len(props["NetworkConfiguration"]["SubnetIds"]) == 2
    deployments = [
        k
        for k, r in resources(template, "Custom::CDKBucketDeployment").items()
        if r["Properties"]["DestinationBucketName"] == {"Ref": source_id}
    ]
    assert deployments and deployments[0] in env["DependsOn"]  # bundle uploaded before MWAA starts
    role_id = props["ExecutionRoleArn"]["Fn::GetAtt"][0]
    actions = {a for s in statements(template, role_id) for a in as_list(s["Action"])}
    assert {
        "glue:CreateJob",
        "glue:StartJobRun",
        "glue:DeleteJob",
        "iam:PassRole",
        "sns:Publish",
        "airflow:GetEnvironment",
        "ssm:GetParameter",
        "secretsmanager:GetSecretValue",
    } <= actions
    # the startup script's settings: what lakehouse/config.py reads, secrets only by reference
    known = set(re.findall(r'"(LAKEHOUSE_[A-Z0-9_]+)"', Path(lakehouse.config.__file__).read_text()))
    _, parameter = only(template, "AWS::SSM::Parameter")
    text = json.dumps(parameter["Properties"]["Value"])
    names = set(re.findall(r"LAKEHOUSE_[A-Z0-9_]+", text))
    assert (
        names <= known
        and {"LAKEHOUSE_RUNNER", "LAKEHOUSE_GLUE_ROLE_ARN", "LAKEHOUSE_PG_PASSWORD", "LAKEHOUSE_GLUE_CONNECTIONS"}
        <= names
    )
    assert "resolve:secretsmanager" not in text  # the startup script resolves the secret at start


def test_metadata_warehouse_alerts_and_secrets(template: dict[str, Any]) -> None:
    _, db = only(template, "AWS::RDS::DBInstance")
    assert db["Properties"]["Engine"] == "postgres" and db["Properties"]["PubliclyAccessible"] is False
    assert db["Properties"]["StorageEncrypted"] is True and db["Properties"]["DBName"] == "lakehouse"
    _, namespace = only(template, "AWS::RedshiftServerless::Namespace")
    _, workgroup = only(template, "AWS::RedshiftServerless::Workgroup")
    assert namespace["Properties"]["DbName"] == "warehouse"
    assert "resolve:secretsmanager" in json.dumps(namespace["Properties"]["AdminUserPassword"])
    assert workgroup["Properties"]["PubliclyAccessible"] is False and len(workgroup["Properties"]["SubnetIds"]) == 3
    assert resources(template, "AWS::SNS::Topic")
    names = {
        json.dumps(s["Properties"].get("Name")) for s in resources(template, "AWS::SecretsManager::Secret").values()
    }
    assert names == {'"lakehouse/metadata-db"', '"lakehouse/warehouse"'}
    _, warehouse = only(template, "AWS::SecretsManager::Secret", "WarehouseSecret")
    generate = warehouse["Properties"]["GenerateSecretString"]
    assert generate["RequireEachIncludedType"] is True and generate["ExcludePunctuation"] is True  # Redshift's rules
    shape = json.dumps(generate)
    for key in ("host", "port", "dbname", "username"):  # what lakehouse_jobs.warehouse needs
        assert f'\\"{key}\\"' in shape


def test_metadata_schema_is_migrated_during_the_deployment(template: dict[str, Any], dist: Path) -> None:
    """The admin function (in the VPC, like RDS) is the custom resource's handler; its property is
    the digest of the migrations in the zip, so changed migrations are applied by the next deploy,
    and MWAA starts only once the schema its DAG file reads exists."""
    admin_id, admin = only(template, "AWS::Lambda::Function", "MetadataAdmin")
    props = admin["Properties"]
    assert props["Handler"] == "metadata_admin.handler" and props["Runtime"] == "python3.11"
    assert props["VpcConfig"]["SubnetIds"]
    variables = props["Environment"]["Variables"]
    assert "resolve:secretsmanager" in json.dumps(variables["LAKEHOUSE_PG_PASSWORD"])
    assert not {"LAKEHOUSE_AIRFLOW_URL", "LAKEHOUSE_AIRFLOW_API"} & set(variables)  # no cycle with MWAA
    schema_id, schema = only(template, "Custom::LakehouseMetadataSchema")
    digest = hashlib.sha256()
    with zipfile.ZipFile(dist / "lambda" / "invoker.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("migrations/"))
        assert "metadata_admin.py" in archive.namelist()
        for name in names:
            digest.update(name.encode() + b"\0" + archive.read(name))
    assert schema["Properties"]["MigrationsHash"] == digest.hexdigest()
    provider = template["Resources"][schema["Properties"]["ServiceToken"]["Fn::GetAtt"][0]]
    assert {"Fn::GetAtt": [admin_id, "Arn"]} in provider["Properties"]["Environment"]["Variables"].values()
    _, env = only(template, "AWS::MWAA::Environment")
    assert schema_id in env["DependsOn"]


def test_outputs_name_what_the_post_deploy_steps_use(template: dict[str, Any]) -> None:
    outputs = set(template["Outputs"])
    assert {
        "LandingBucket",
        "MetadataAdminFunction",
        "WarehouseSecretArn",
        "WarehouseWorkgroupName",
        "AirflowUiUrl",
        "AlertTopicArn",
        "GlueWarehouseConnection",
    } <= outputs


def test_cfn_lint_finds_no_errors(cdk_out: Path) -> None:
    result = subprocess.run(
        [str(CFN_LINT), "--format", "json", str(cdk_out / "Lakehouse.template.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    findings = json.loads(result.stdout or "[]")
    unexpected = [f for f in findings if f["Rule"]["Id"] not in ALLOWED_FINDINGS]
    assert unexpected == [], json.dumps(unexpected, indent=1)[:4000]
    assert not [f for f in findings if f["Level"] == "Error"]
