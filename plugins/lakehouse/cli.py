"""``lakehouse``: the command line of the framework (stack, demo, metadata, invoker, runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from lakehouse.config import load_settings
from lakehouse.hooks.airflow_api import AirflowApiClient

__all__ = ["main"]


def _cmd_up(args: argparse.Namespace) -> int:
    from lakehouse.stack import services

    settings = load_settings()
    services.up(settings)
    print(f"stack is up. Airflow: {settings.airflow_url} ({settings.airflow_username} / {settings.airflow_password})")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from lakehouse.stack import services

    stopped = services.down(load_settings())
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from lakehouse.runners.spark_pool import pool_status
    from lakehouse.stack import services

    settings = load_settings()
    for s in services.status(settings):
        print(
            f"{s.name:24} {'running' if s.running else 'stopped'}"
            + (f"  pgid={s.pid} processes={s.processes}" if s.running and s.pid else "")
        )
        if s.name == "spark-pool" and s.running and (pool := pool_status(settings)) is not None:
            print(
                f"{'':24} drivers: {len(pool['ready'])} ready, {len(pool['busy'])} busy, "
                f"{len(pool['starting'])} starting; {pool['served']} run(s) served"
            )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = load_settings().info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        a, s = info["airflow"], info["s3"]
        print(f"Airflow UI/API  {a['url']}  login {a['username']} / {a['password']}")
        print(
            f"S3 (landing)    {s['endpoint_url']}  bucket {s['landing_bucket']}  "
            f"keys {s['access_key_id']} / {s['secret_access_key']}"
        )
        print(f"metadata        {info['metadata_dsn']}")
        print(f"warehouse       {info['warehouse_dsn']}")
        print(f"Iceberg catalog {info['catalog_dsn']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lakehouse.demo import run_demo
    from lakehouse.stack import services

    settings = load_settings()
    if not args.no_up:  # --no-up: a stack that runs elsewhere (docker compose), reached by the settings
        services.up(settings)
    return run_demo(settings)


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    from lakehouse.metadata.migrations import migrate

    settings = load_settings()
    applied = migrate(settings.metadata_dsn, settings.root / "metadata" / "migrations")
    print("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))
    return 0


def _airflow_client() -> AirflowApiClient:
    s = load_settings()
    return AirflowApiClient(s.airflow_url, s.airflow_username, s.airflow_password)


def _cmd_invoker_serve(args: argparse.Namespace) -> int:
    from lakehouse.invoker.core import build_invoker
    from lakehouse.invoker.server import InvokerServer

    settings = load_settings()
    from lakehouse.hooks.s3 import landing_client
    from lakehouse.invoker.reconcile import reconcile
    from lakehouse.invoker.spool import EventSpool

    invoker = build_invoker(settings)
    s3 = landing_client(settings)
    server = InvokerServer(
        (settings.invoker_bind, settings.invoker_port),
        invoker,
        settings.invoker_token,
        dispatch_workers=settings.invoker_dispatch_workers,
        spool=EventSpool(settings.run_dir / "invoker-spool"),
        sweep=lambda: reconcile(invoker, s3)[1],
        sweep_interval=settings.reconcile_interval,
    )
    logging.getLogger(__name__).info("invoker listening on %s", settings.invoker_url)
    server.serve()
    return 0


def _cmd_spark_pool_serve(args: argparse.Namespace) -> int:
    from lakehouse.runners.spark_pool import SparkPool, pool_socket

    settings = load_settings()
    pool = SparkPool(settings, settings.spark_drivers, settings.spark_driver_max_runs, settings.spark_driver_max_rss_mb)
    pool.serve_forever(pool_socket(settings))
    return 0


def _cmd_trigger(args: argparse.Namespace) -> int:
    from lakehouse.invoker.core import Invoker

    outcome = Invoker(load_settings().metadata_dsn, _airflow_client()).trigger_flow(args.flow_id)
    print(json.dumps(outcome.as_dict()))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    """List the flow's bucket under the prefix and send every object to the flow again."""
    from collections import Counter

    from lakehouse.hooks.s3 import landing_client
    from lakehouse.invoker.core import build_invoker
    from lakehouse.invoker.reconcile import bucket_objects

    settings = load_settings()
    invoker = build_invoker(settings)
    flow = invoker.catalogue().flows.get(args.flow)
    if flow is None or not flow.trigger_bucket:
        raise LookupError(f"no active flow {args.flow!r} with a file trigger")
    s3 = landing_client(settings)
    objects = (event for page in bucket_objects(s3, flow.trigger_bucket, args.prefix, "replay") for event in page)
    try:
        outcomes = invoker.replay(args.flow, objects, force=args.force)
    finally:
        invoker.close()
    for outcome in outcomes:
        if args.verbose or outcome.status not in ("duplicate", "not_matching"):
            print(
                f"{outcome.status:12} s3://{outcome.bucket}/{outcome.key}  {outcome.dag_run_id or ''} {outcome.detail}"
            )
    counts = Counter(o.status for o in outcomes)
    print("replay: " + (", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no objects"))
    return 1 if counts.get("failed") else 0


def _cmd_reconcile(args: argparse.Namespace) -> int:
    """One reconciliation sweep now: objects in the bucket that no event announced are recorded."""
    from lakehouse.hooks.s3 import landing_client
    from lakehouse.invoker.core import build_invoker
    from lakehouse.invoker.reconcile import reconcile

    settings = load_settings()
    invoker = build_invoker(settings)
    try:
        results, jobs = reconcile(invoker, landing_client(settings), args.flow)
        outcomes = [invoker.dispatch(job) for job in [*jobs, *invoker.gather_batches()]]
    finally:
        invoker.close()
    for result in results:
        print(result.line())
        for outcome in result.recorded[: args.show]:
            print(f"  recorded s3://{outcome.bucket}/{outcome.key}")
        if len(result.recorded) > args.show:
            print(f"  ... and {len(result.recorded) - args.show} more")
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in failed:
        print(f"  Airflow refused {outcome.dag_run_id}: {outcome.detail}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_flow_validate(args: argparse.Namespace) -> int:
    from lakehouse.metadata.flow_documents import validate_stored_flows

    problems = validate_stored_flows(load_settings().metadata_dsn, args.flow_id)
    for problem in problems:
        print(problem)
    flows = len({p.flow_id for p in problems})
    print(f"{len(problems)} problem(s)" + (f" in {flows} flow(s)" if problems else ": every flow is valid"))
    return 1 if problems else 0


def _cmd_flow_apply(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lakehouse.metadata.flow_documents import FlowDocumentError, apply_flow_document, read_flow_document

    failed = 0
    for name in args.files:
        path = Path(name)
        try:
            flow = apply_flow_document(load_settings().metadata_dsn, read_flow_document(path), str(path))
        except FlowDocumentError as exc:
            failed += 1
            print(f"{path}: not applied, {len(exc.problems)} problem(s):", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            continue
        print(
            f"{path}: flow {flow.flow_id!r} applied ({len(flow.tasks)} task(s)); "
            f"DAG {flow.effective_dag_id!r} appears at the next dag-processor parse"
        )
    return 1 if failed else 0


def _cmd_flow_export(args: argparse.Namespace) -> int:
    from lakehouse.metadata.flow_documents import export_flow_document

    sys.stdout.write(export_flow_document(load_settings().metadata_dsn, args.flow_id))
    return 0


def _cmd_flow_schema(args: argparse.Namespace) -> int:
    from lakehouse.metadata.flow_model import flow_document_json_schema

    print(json.dumps(flow_document_json_schema(), indent=2))
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from lakehouse.metadata.trace import format_runs, list_task_runs, to_json

    rows = list_task_runs(load_settings().metadata_dsn, args.flow, args.failed, args.limit)
    print(to_json(rows) if args.json else format_runs(rows))
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    """Everything about one object, from the ledger and the audit; Airflow adds each run's state."""
    from lakehouse.hooks.airflow_api import AirflowUnavailableError
    from lakehouse.metadata.trace import format_trace, to_json, trace_object

    settings = load_settings()
    client = None if args.no_airflow else _airflow_client()

    def run_state(dag_id: str, run_id: str) -> str | None:
        if client is None:
            return None
        try:
            run = client.get_dag_run(dag_id, run_id)
        except (AirflowUnavailableError, RuntimeError):
            return "unknown (Airflow not reachable)"
        return run["state"] if run else "not in Airflow"

    trace = trace_object(settings.metadata_dsn, args.uri, run_state)
    print(to_json(trace) if args.json else format_trace(trace))
    return 0 if trace["versions"] else 1


def _cmd_docs_config(args: argparse.Namespace) -> int:
    from lakehouse.config import settings_reference_markdown

    sys.stdout.write(settings_reference_markdown())
    return 0


def _cmd_docs_templates(args: argparse.Namespace) -> int:
    from lakehouse.metadata.catalogue import templates_reference_markdown

    sys.stdout.write(templates_reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakehouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local stack").set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop everything the stack started").set_defaults(func=_cmd_down)
    sub.add_parser("status", help="what of the stack is running").set_defaults(func=_cmd_status)
    info = sub.add_parser("info", help="endpoints and credentials")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="start the stack and run the sample invoice flow end to end")
    demo.add_argument(
        "--no-up", action="store_true", help="do not start the local stack: use one that already runs (docker compose)"
    )
    demo.set_defaults(func=_cmd_demo)
    db = sub.add_parser("db", help="metadata database").add_subparsers(dest="db_command", required=True)
    db.add_parser("migrate", help="apply pending migrations").set_defaults(func=_cmd_db_migrate)
    inv = sub.add_parser("invoker", help="the object-event invoker").add_subparsers(
        dest="invoker_command", required=True
    )
    inv.add_parser("serve", help="serve the webhook endpoint").set_defaults(func=_cmd_invoker_serve)
    pool = sub.add_parser("spark-pool", help="the pool of warm Spark drivers").add_subparsers(
        dest="pool_command", required=True
    )
    pool.add_parser("serve", help="keep warm drivers ready and run templates on them").set_defaults(
        func=_cmd_spark_pool_serve
    )
    rep = sub.add_parser("replay", help="send every object under a prefix to a flow again (backfill)")
    rep.add_argument("--flow", required=True, help="flow_id to start")
    rep.add_argument("--prefix", default="", help="key prefix in the flow's trigger bucket")
    rep.add_argument(
        "--force", action="store_true", help="start a new run even for file versions this flow already ran"
    )
    rep.add_argument("--verbose", action="store_true", help="also list duplicates and non-matching keys")
    rep.set_defaults(func=_cmd_replay)
    rec = sub.add_parser("reconcile", help="list the flows' trigger prefixes and record files no event announced")
    rec.add_argument("--flow", help="one flow_id (default: every active file-triggered flow)")
    rec.add_argument("--show", type=int, default=20, help="recorded objects to list per flow")
    rec.set_defaults(func=_cmd_reconcile)
    trig = sub.add_parser("trigger", help="start a flow by flow_id (the scheduled invoker)")
    trig.add_argument("flow_id")
    trig.set_defaults(func=_cmd_trigger)
    flow = sub.add_parser("flow", help="flows as YAML documents").add_subparsers(dest="flow_command", required=True)
    apply = flow.add_parser("apply", help="validate and upsert flows from YAML files, one transaction each")
    apply.add_argument("files", nargs="+", metavar="FILE.yaml")
    apply.set_defaults(func=_cmd_flow_apply)
    export = flow.add_parser("export", help="print a stored flow as YAML (apply accepts it unchanged)")
    export.add_argument("flow_id")
    export.set_defaults(func=_cmd_flow_export)
    flow.add_parser("schema", help="print the flow document's JSON Schema (for editors and CI)").set_defaults(
        func=_cmd_flow_schema
    )
    for parent, name in ((flow, "validate"), (sub, "validate")):  # `lakehouse validate`: the short form
        val = parent.add_parser(name, help="check stored flows (paused ones too) as the DAG factory does")
        val.add_argument("flow_id", nargs="?")
        val.set_defaults(func=_cmd_flow_validate)
    runs = sub.add_parser("runs", help="task-run audit: each try, its counts and why it failed")
    runs.add_argument("--flow")
    runs.add_argument("--failed", action="store_true", help="failed, timed-out and killed tries only")
    runs.add_argument("--limit", type=int, default=30)
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=_cmd_runs)
    trace = sub.add_parser("trace", help="where is my file: ledger, runs, task tries and outputs of one object")
    trace.add_argument("uri", metavar="s3://BUCKET/KEY")
    trace.add_argument("--json", action="store_true")
    trace.add_argument("--no-airflow", action="store_true", help="do not ask Airflow for each run's state")
    trace.set_defaults(func=_cmd_trace)
    docs = sub.add_parser("docs", help="generated reference pages").add_subparsers(dest="docs_command", required=True)
    docs.add_parser("config", help="the settings reference (docs/configuration.md)").set_defaults(func=_cmd_docs_config)
    docs.add_parser("templates", help="the templates reference (docs/templates.md)").set_defaults(
        func=_cmd_docs_templates
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (RuntimeError, TimeoutError, LookupError, ValueError) as exc:
        print(f"lakehouse {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
