"""The `llmos` command line (Typer + rich). Each verb is one function: its signature and
docstring are its --help. Verbs talk to the daemon through the SDK; every error a user
can cause prints one line and exits non-zero (1: the request failed, 2: bad usage).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from llmos.cli import identity, jobview, lineage, render, serve, train
from llmos.cli import monitor as monitor_cli
from llmos.cli import optimize as optimize_cli
from llmos.cli import sim as sim_cli
from llmos.cli.data import data_app
from llmos.cli.models import models_app
from llmos.cli.pipeline import pipeline_app
from llmos.cli.tune import tune_app
from llmos.cli.top import top as top_cli
from llmos.cli.errors import UsageError
from llmos.config import parse_labels
from llmos.sdk.client import APIError, Client, DaemonUnreachable, LLMOSClientError, parse_params

app = typer.Typer(help="llmos: an operating system for AI workloads.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
job_app = typer.Typer(help="Submit, list, inspect, follow and cancel jobs.", no_args_is_help=True)
artifacts_app = typer.Typer(help="Immutable, content-addressed artifacts.", no_args_is_help=True)
app.add_typer(job_app, name="job")
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
models_app.command("compress")(optimize_cli.compress)
models_app.command("compare")(optimize_cli.compare)
keys_app = typer.Typer(help="Encryption keys for data at rest.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(identity.users_app, name="users")
app.add_typer(identity.teams_app, name="teams")
app.add_typer(identity.tokens_app, name="tokens")
app.command()(serve.deploy)
app.add_typer(serve.deployments_app, name="deployments")
app.command()(train.train)
app.command()(train.evaluate)
app.command()(identity.login)
app.command()(identity.logout)
app.command()(identity.whoami)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(tune_app, name="tune")
app.command()(lineage.lineage)
app.command("events")(monitor_cli.events)
app.add_typer(monitor_cli.alerts_app, name="alerts")
app.command("sim")(sim_cli.sim)
app.command("top")(top_cli)

out = Console()
err = Console(stderr=True)
QUIET = typer.Option(False, "--quiet", "-q", help="Print only the id (for scripts: "
                     "ID=$(llmos ... -q)); progress, if any, goes to stderr.")


def _client() -> Client:
    return Client()


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- daemon ---------------------------------------------------------------------------------


@app.command()
def up(
    port: Optional[int] = typer.Option(None, help="Port to listen on (default 8470 or LLMOS_PORT)."),
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate: serve "
                                            "HTTPS (or LLMOS_TLS_CERT)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM private key of the "
                                           "certificate (or LLMOS_TLS_KEY)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run jobs on this Ray cluster "
                                      "(host:port of its head; or LLMOS_RAY_ADDRESS). "
                                      "Needs LLMOS_DATABASE_URL on PostgreSQL."),
    advertise_url: Optional[str] = typer.Option(
        None, "--advertise-url", help="The API address every node reaches the daemon at "
        "(or LLMOS_ADVERTISE_URL)."),
) -> None:
    """Start the llmos daemon: REST API, scheduler and job supervision, in one process.
    The first start creates the administrator and prints their token once."""
    from llmos.cli.daemon import serve

    serve(port=port, host=host, console=out, tls_cert=tls_cert, tls_key=tls_key,
          ray_address=ray, advertise_url=advertise_url)


nodes_app = typer.Typer(help="The nodes jobs run on: list, drain, undrain.",
                        invoke_without_command=True)
app.add_typer(nodes_app, name="nodes")


@nodes_app.callback()
def nodes(ctx: typer.Context,
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Each node: state (ready, draining, lost), labels, free/total resources, jobs."""
    if ctx.invoked_subcommand is not None:
        return
    with _client() as c:
        data = c.nodes()
    _json(data) if as_json else render.nodes(out, data)


@nodes_app.command("drain")
def nodes_drain(node: str = typer.Argument(..., help="The node's name (see `llmos nodes`)."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Move work off a node: no new jobs; checkpointable jobs yield and resume elsewhere;
    serving replicas are replaced first; other jobs run to their end."""
    with _client() as c:
        data = c.drain(node)
    _json(data) if as_json else out.print(
        f"node [bold]{node}[/] draining: {data['running_jobs']} job(s) still on it")


@nodes_app.command("undrain")
def nodes_undrain(node: str = typer.Argument(..., help="The node's name."),
                  as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Let a drained node take new work again."""
    with _client() as c:
        data = c.drain(node, undo=True)
    _json(data) if as_json else out.print(f"node [bold]{node}[/] {data['state']}")


@app.command()
def resources(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Each node's CPUs, memory and GPUs, free and in use; the scheduler's queue."""
    with _client() as c:
        data = c.resources()
    _json(data) if as_json else render.resources(out, data)


# -- jobs -------------------------------------------------------------------------------------


@job_app.command("submit")
def job_submit(
    program: str = typer.Argument(..., help="module:function, path/to/file.py:function, or a "
                                  "registered name (noop, sleep, echo, allreduce)."),
    params: Optional[str] = typer.Option(None, "--params", "-p", help="Parameters as a JSON object."),
    cpu: Optional[float] = typer.Option(None, help="CPU cores (fractions allowed; default 1)."),
    memory: Optional[int] = typer.Option(None, "--memory", help="Memory limit in MB."),
    gpu: Optional[int] = typer.Option(None, help="Whole GPUs."),
    gpu_memory: Optional[int] = typer.Option(None, "--gpu-memory", help="MB needed on each GPU."),
    gpu_share: Optional[int] = typer.Option(None, "--gpu-share", help="MB of one GPU's memory, "
                                            "shared with other jobs (instead of --gpu)."),
    priority: str = typer.Option("normal", help="high, normal or low."),
    timeout: Optional[float] = typer.Option(None, help="Stop the job after this many seconds."),
    retries: int = typer.Option(0, "--retries", help="Run again this many times on failure."),
    checkpointable: bool = typer.Option(False, help="The job saves checkpoints and can be "
                                        "preempted and resumed."),
    after: list[int] = typer.Option([], "--after", help="Start only after this job succeeded "
                                    "(repeatable)."),
    name: Optional[str] = typer.Option(None, help="A name to find the job by."),
    team: Optional[str] = typer.Option(None, help="Run it for this team (default: yours)."),
    node_label: list[str] = typer.Option([], "--node-label", help="Run only on nodes with "
                                         "this label, key=value (repeatable)."),
    group: Optional[str] = typer.Option(None, help="Placement group for --spread and "
                                        "--anti-affinity (default: the job's name)."),
    spread: bool = typer.Option(False, "--spread", help="Prefer nodes running the fewest "
                                "jobs of its group."),
    anti_affinity: bool = typer.Option(False, "--anti-affinity", help="Never share a node "
                                       "with a job of its group."),
    multi_node: bool = typer.Option(False, "--multi-node", help="When it asks more GPUs than "
                                    "any node has, run it over several nodes, one rank per "
                                    "node (a distributed program; see README)."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Show live progress until it ends."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    quiet: bool = QUIET,
) -> None:
    """Submit a job; prints its id (and follows it with --wait)."""
    if priority not in ("high", "normal", "low"):
        raise UsageError(f"--priority must be high, normal or low, not {priority!r}")
    try:
        parsed = parse_params(params)
        labels = parse_labels(node_label)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if (spread or anti_affinity) and not (group or name):
        raise UsageError("--spread and --anti-affinity need a --group (or a --name)")
    with _client() as c:
        job = c.jobs.submit(_absolute_program(program), parsed, name=name, cpu=cpu,
                            memory_mb=memory, gpu=gpu, gpu_memory_mb=gpu_memory,
                            gpu_share_mb=gpu_share, priority=priority, max_retries=retries,
                            timeout_s=timeout, checkpointable=checkpointable, depends_on=after,
                            team=team, node_labels=labels, group=group, spread=spread,
                            anti_affinity=anti_affinity, multi_node=multi_node)
        if wait:
            job = render.watch(err if quiet else out, c, job["id"], quiet=as_json)
    if as_json:
        _json(job)
    elif quiet:
        print(job["id"])
    else:
        out.print(f"job [bold]{job['id']}[/] {render.state(job['state'])}")
    if wait and job["state"] != "SUCCEEDED":
        raise typer.Exit(1)


def _absolute_program(program: str) -> str:
    where, sep, func = program.rpartition(":")
    if sep and where.endswith(".py") and not Path(where).is_absolute():
        return f"{Path(where).resolve()}:{func}"
    return program


@job_app.command("list")
def job_list(
    state: list[str] = typer.Option([], "--state", "-s", help="Only jobs in this state (repeatable)."),
    owner: Optional[str] = typer.Option(None, help="Only jobs of this owner."),
    team: Optional[str] = typer.Option(None, help="Only jobs of this team."),
    priority: Optional[str] = typer.Option(None, help="Only jobs of this priority class."),
    limit: int = typer.Option(50, min=1, max=10000, help="At most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Jobs, newest first."""
    with _client() as c:
        data = c.jobs.list(state=state or None, owner=owner, priority=priority, limit=limit,
                           team=team)
    _json(data) if as_json else render.job_table(out, data)


@job_app.command("show")
def job_show(
    job_id: int = typer.Argument(..., min=1, help="Job id."),
    metric: Optional[str] = typer.Option(None, "--metric", "-m", help="Print this metric's "
                                         "every point (step, value, time) instead."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One job: its spec, state, why it waits or how it ended, history, and each metric's
    latest value with a sparkline of its history."""
    with _client() as c:
        job = c.jobs.get(job_id)
        if metric is not None and not metric.strip():
            raise UsageError("--metric needs a metric's name (e.g. --metric loss)")
        metrics = c.jobs.metrics(job_id, name=metric)
        if metric is not None and not metrics:
            names = sorted({m["name"] for m in c.jobs.metrics(job_id)})
            raise UsageError(f"job {job_id} reported no metric {metric!r} (its metrics: "
                             f"{', '.join(names) or 'none'})")
    if as_json:
        _json(metrics if metric is not None else {**job, "metrics": metrics})
    elif metric is not None:
        jobview.metric_series(out, job_id, metric, metrics)
    else:
        jobview.detail(out, job, metrics)


@job_app.command("wait")
def job_wait(job_id: int = typer.Argument(..., min=1, help="Job id.")) -> None:
    """Show live progress until the job ends; exit 0 only if it succeeded."""
    with _client() as c:
        job = render.watch(out, c, job_id)
    out.print(f"job [bold]{job['id']}[/] {render.state(job['state'])}  "
              f"{escape(render.printable(job.get('reason') or ''))}")
    if job["state"] != "SUCCEEDED":
        raise typer.Exit(1)


@job_app.command("logs")
def job_logs(
    job_id: int = typer.Argument(..., min=1, help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
    stream: Optional[str] = typer.Option(None, help="stdout or stderr (default: both)."),
    tail: Optional[int] = typer.Option(None, min=1, help="Only the last N lines."),
) -> None:
    """The job's stdout and stderr, attempt by attempt (a progress bar drawn with carriage
    returns shows as its last state)."""
    if stream not in (None, "stdout", "stderr"):
        raise UsageError("--stream must be stdout or stderr")
    with _client() as c:
        if not follow:
            if stream:
                text = "\n".join(jobview.clean_lines(c.jobs.logs(job_id, stream, tail)))
            else:
                text = jobview.merged_logs(c.jobs.logs(job_id, "stdout", tail),
                                           c.jobs.logs(job_id, "stderr", tail))
            sys.stdout.write(text)
            return
        seen = jobview.FollowedLogs()
        for event, line in c.jobs.follow(job_id, stream=stream, tail=tail):
            if event == "end":
                end = json.loads(line)
                err.print(f"[dim]-- job {job_id} {end['state']}: "
                          f"{escape(render.printable(end.get('reason') or ''))}[/]")
                if end["state"] != "SUCCEEDED":
                    raise typer.Exit(1)
                return
            line = seen.line(line)
            if line is None:
                continue
            target = sys.stderr if event == "stderr" else sys.stdout
            target.write(line + "\n")
            target.flush()


@job_app.command("cancel")
def job_cancel(
    job_id: int = typer.Argument(..., min=1, help="Job id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Cancel a job: a queued one at once, a running one by SIGTERM then SIGKILL."""
    with _client() as c:
        job = c.jobs.cancel(job_id)
    if as_json:
        _json(job)
    elif job["state"] == "CANCELLED":
        out.print(f"job [bold]{job_id}[/] {render.state('CANCELLED')}")
    else:
        out.print(f"job [bold]{job_id}[/] is being stopped (SIGTERM sent)")


# -- artifacts --------------------------------------------------------------------------------


@artifacts_app.command("ls")
def artifacts_ls(
    kind: Optional[str] = typer.Option(None, help="Only artifacts of this kind."),
    job: Optional[int] = typer.Option(None, "--job", help="Only artifacts this job produced."),
    limit: int = typer.Option(100, min=1, max=10000, help="At most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Artifacts, newest first."""
    with _client() as c:
        arts = c.artifacts.list(kind=kind, job_id=job, limit=limit)
    _json({"artifacts": arts}) if as_json else render.artifact_table(out, arts)


@artifacts_app.command("show")
def artifacts_show(
    artifact_id: int = typer.Argument(..., min=1, help="Artifact id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """An artifact's metadata and lineage."""
    with _client() as c:
        art = c.artifacts.get(artifact_id)
    _json(art) if as_json else render.artifact_table(out, [art])


@artifacts_app.command("put")
def artifacts_put(
    path: Path = typer.Argument(..., help="File to store."),
    name: Optional[str] = typer.Option(None, help="Name (default: the file's name)."),
    kind: str = typer.Option("file", help="Kind, e.g. file, dataset, model."),
    parent: list[int] = typer.Option([], "--parent", help="A parent artifact id (repeatable)."),
    sensitive: bool = typer.Option(False, "--sensitive", help="Encrypt it at rest "
                                   "(AES-256-GCM, the daemon's key)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    quiet: bool = QUIET,
) -> None:
    """Store a file as a new immutable artifact; prints its id."""
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    with _client() as c:
        art = c.artifacts.put(path, name=name, kind=kind, parents=parent, sensitive=sensitive)
    if as_json:
        _json(art)
    elif quiet:
        print(art["id"])
    else:
        out.print(f"artifact [bold]{art['id']}[/] {art['name']} {art['size']} bytes "
                  f"sha256:{art['sha256'][:12]}" + ("  encrypted" if art["encrypted"] else ""))


@artifacts_app.command("get")
def artifacts_get(
    artifact_id: int = typer.Argument(..., min=1, help="Artifact id."),
    output: Path = typer.Option(Path("."), "--output", "-o", help="File or folder to write to."),
) -> None:
    """Download an artifact (its sha256 is checked before the file appears)."""
    with _client() as c:
        dest = c.artifacts.download(artifact_id, output)
    out.print(f"wrote {dest}")


# -- keys -------------------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Make a fresh key current, re-encrypt every encrypted artifact, retire old keys."""
    with _client() as c:
        result = c.keys.rotate()
    if as_json:
        return _json(result)
    out.print(f"key [bold]{result['key_id']}[/] is current; {result['reencrypted']} of "
              f"{result['artifacts']} encrypted artifacts re-encrypted; retired: "
              f"{', '.join(result['retired_keys']) or 'none'}")


# -- audit ------------------------------------------------------------------------------------


@audit_app.command("ls")
def audit_ls(
    actor: Optional[str] = typer.Option(None, help="Only this actor."),
    action: Optional[str] = typer.Option(None, help="Actions containing this text."),
    target: Optional[str] = typer.Option(None, help="Targets containing this text."),
    since: Optional[str] = typer.Option(None, help="From this time (ISO 8601)."),
    until: Optional[str] = typer.Option(None, help="Up to this time (ISO 8601)."),
    limit: int = typer.Option(50, min=1, max=10000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Audit records: who did what to which target, when, and how it ended."""
    with _client() as c:
        records = c.audit.list(actor, action, target, since, until, limit)
    if as_json:
        return _json(records)
    render.audit_table(out, records)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the keyed chain against its head file; exit 1 naming the first record
    changed, removed or reordered, or the records cut from its end."""
    with _client() as c:
        verdict = c.audit.verify()
    if verdict["ok"]:
        out.print(f"[green]ok[/]: {verdict['message']}")
    else:
        err.print(f"[red]audit log tampered with[/]: {verdict['message']}")
        raise typer.Exit(1)


LISTING = ("ls", "list")


def command():
    """The `llmos` command tree (what :func:`main` runs and the help test walks). Every
    listing verb answers to both `ls` and `list`; the spelling not shown is hidden. A
    verb's summary in its group's list is its docstring's first paragraph, on one line."""
    group = typer.main.get_command(app)
    _finish(group)
    return group


def _finish(group) -> None:
    for name, cmd in list(group.commands.items()):
        cmd.short_help = " ".join((cmd.help or "").split("\n\n")[0].split())
        if hasattr(cmd, "commands"):  # a group
            _finish(cmd)
        elif name in LISTING:
            other = LISTING[1 - LISTING.index(name)]
            if other not in group.commands:
                alias = copy.copy(cmd)
                alias.hidden = True
                group.add_command(alias, other)


def main() -> None:
    """Entry point: run the app, turning every user-caused error into one line."""
    try:
        code = command().main(prog_name="llmos", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code if isinstance(code, int) else 1)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except UsageError as e:
        err.print(f"[red]error:[/] {e}")
        sys.exit(2)
    except DaemonUnreachable as e:
        err.print(f"[red]error:[/] {e}")
        sys.exit(1)
    except APIError as e:
        err.print(f"[red]error:[/] {e.message}")
        sys.exit(1)
    except LLMOSClientError as e:
        err.print(f"[red]error:[/] {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # usage errors from Typer's bundled click, and the like
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            err.print(f"[red]error:[/] {e.format_message()}")
            sys.exit(e.exit_code)
        err.print(f"[red]internal error:[/] {type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
