"""The ``jobsup`` command: thin over the client and the config module.

Exit codes: 0 ok; 1 the job failed or was cancelled (or a wait timed out);
2 usage or validation error; 3 daemon or Redis unreachable.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from supervisord import __version__, progress, units
from supervisord import config as config_mod
from supervisord.client import Client, Job
from supervisord.errors import (
    ConfigError,
    JobsupError,
    Timeout,
    Unauthorized,
    Unavailable,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _config_errors(exc: ConfigError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    for err in exc.errors:
        click.echo(f"  {err['loc']}: {err['msg']}", err=True)
    sys.exit(EXIT_USAGE)


def _common(fn: Callable) -> Callable:
    """-c/--config and --endpoint on every subcommand, as well as on the group."""
    @click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                  default=None, help="config file (also finds the daemon's endpoint)")
    @click.option("--endpoint", default=None, help="daemon API endpoint, e.g. tcp://host:7700")
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx: click.Context, config_path: str | None, endpoint: str | None,
                **kwargs: Any) -> Any:
        obj = ctx.ensure_object(dict)
        if config_path:
            obj["config"] = config_path
        if endpoint:
            obj["endpoint"] = endpoint
        try:
            return ctx.invoke(fn, **kwargs)
        except ConfigError as exc:
            _config_errors(exc)
        except (Unavailable, Unauthorized) as exc:
            _fail(exc.message, EXIT_UNREACHABLE)
        except Timeout as exc:
            _fail(exc.message, EXIT_JOB_FAILED)
        except JobsupError as exc:
            _fail(exc.message, EXIT_USAGE)
    return wrapper


def _client() -> Client:
    obj = click.get_current_context().find_root().ensure_object(dict)
    endpoint = obj.get("endpoint")
    path = obj.get("config") or os.environ.get("JOBSUP_CONFIG")
    if not endpoint and path:
        api = config_mod.load(path).api
        return Client(api.endpoint, max_message=api.max_message)
    return Client(endpoint)


def _ts(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _show_job(job: Job) -> None:
    d = job.model_dump()
    click.echo(f"job       {job.id}")
    click.echo(f"type      {job.type}  (pool {job.pool}, priority {job.priority})")
    click.echo(f"status    {job.status}  attempt {job.attempt}/{job.max_attempts}")
    if job.status == "scheduled" and job.run_at:
        why = (job.error or {}).get("kind") or "delay"
        click.echo(f"next run  {_ts(job.run_at)}  ({why})")
    if job.worker:
        click.echo(f"worker    {job.worker['node']} pid {job.worker['pid']}")
    if job.progressed:  # a job that never reported progress shows none
        click.echo(f"progress  {job.progress:.0f}%  {job.progress_message or ''}")
    click.echo(f"created   {_ts(job.created_at)}")
    click.echo(f"started   {_ts(job.started_at)}")
    click.echo(f"finished  {_ts(job.finished_at)}")
    if job.tags:
        click.echo("tags      " + " ".join(f"{k}={v}" for k, v in job.tags.items()))
    if job.status == "succeeded":
        click.echo(f"result    {json.dumps(d['result'], default=str)}")
    if job.error and job.status != "succeeded":
        click.echo(f"error     [{job.error.get('kind')}] {job.error.get('message')}")
    click.echo("history")
    for h in job.history:
        where = f"{h.get('node', '')}" + (f" pid {h['pid']}" if h.get("pid") else "")
        kind = f" [{h['kind']}]" if h.get("kind") else ""
        msg = f": {h['message']}" if h.get("message") else ""
        click.echo(f"  {_ts(h.get('t'))}  #{h.get('attempt')}  {h.get('status', ''):<10} "
                   f"{h.get('reason', '')}{kind}{msg}  ({where})")


def _print_job(job: Job, as_json: bool) -> None:
    if as_json:
        _dump(job.model_dump())
    else:
        _show_job(job)


def _exit_for(job: Job) -> None:
    sys.exit(EXIT_OK if job.status == "succeeded" else EXIT_JOB_FAILED)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="jobsup",
                      message="%(prog)s %(version)s")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="config file")
@click.option("--endpoint", default=None, help="daemon API endpoint (or JOBSUP_ENDPOINT)")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, endpoint: str | None) -> None:
    """jobsup: a process-pool supervisor for long, fragile jobs."""
    ctx.ensure_object(dict).update(
        {k: v for k, v in (("config", config_path), ("endpoint", endpoint)) if v})


@main.command()
@_common
def run() -> None:
    """Run the daemon in the foreground (as systemd runs it)."""
    from supervisord.loop import Master

    path = click.get_current_context().find_root().obj.get("config")
    cfg = config_mod.load(path)
    sys.exit(Master(cfg, path).run())


def _payload(text: str | None) -> Any:
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"payload is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
              EXIT_USAGE)


def _tags(values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--tag {item!r} must look like KEY=VALUE", EXIT_USAGE)
        tags[key] = value
    return tags


def _read_jsonl(path: str) -> list[Any]:
    payloads = []
    with click.open_file(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                payloads.append(json.loads(line))
            except json.JSONDecodeError as exc:
                _fail(f"{path}:{n}: not valid JSON: {exc.msg}", EXIT_USAGE)
    if not payloads:
        _fail(f"{path} holds no payloads", EXIT_USAGE)
    return payloads


@main.command()
@click.argument("job_type")
@click.argument("payload", required=False)
@click.option("--priority", type=int, default=None, help="higher runs first (default 0)")
@click.option("--timeout", type=float, default=None, help="hard timeout in seconds")
@click.option("--max-attempts", type=int, default=None)
@click.option("--delay", type=float, default=None, help="run no sooner than S seconds from now")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE, repeatable")
@click.option("--key", default=None, help="idempotency key")
@click.option("--file", "jobs_file", type=click.Path(dir_okay=False, allow_dash=True),
              default=None, help="JSON lines file, one payload per line")
@click.option("--wait", is_flag=True, help="wait for the job and print its final record")
@click.option("--json", "as_json", is_flag=True)
@_common
def submit(job_type: str, payload: str | None, priority: int | None, timeout: float | None,
           max_attempts: int | None, delay: float | None, tags: tuple[str, ...],
           key: str | None, jobs_file: str | None, wait: bool, as_json: bool) -> None:
    """Submit a job of JOB_TYPE with a JSON PAYLOAD (or - for stdin); prints its id."""
    opts = {"priority": priority, "timeout": timeout, "max_attempts": max_attempts,
            "delay": delay, "tags": _tags(tags)}
    with _client() as c:
        if jobs_file:
            if payload is not None:
                _fail("give either a PAYLOAD or --file, not both", EXIT_USAGE)
            payloads = _read_jsonl(jobs_file)
            with progress.Bar("submitting", len(payloads), progress.shown(as_json)) as bar:
                ids = c.submit_many(job_type, payloads, **opts)
                bar.advance(len(ids))
            if wait:
                _wait_many(c, ids, None, as_json, bar.started)
            click.echo(f"{len(ids):,} job(s) submitted in {bar.elapsed:.1f} s", err=True)
            click.echo(json.dumps(ids) if as_json else "\n".join(ids))
            return
        if not wait:
            job_id = c.submit(job_type, _payload(payload), key=key, **opts)
            click.echo(json.dumps({"id": job_id}) if as_json else job_id)
            return
        job = c.run(job_type, _payload(payload), key=key, **opts)
        _print_job(job, as_json)
        _exit_for(job)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@_common
def job(job_id: str, as_json: bool) -> None:
    """Show one job with its history."""
    with _client() as c:
        _print_job(c.get(job_id), as_json)


def _wait_many(c: Client, ids: list[str], timeout: float | None, as_json: bool,
               started: float | None = None) -> None:
    """Wait for many jobs with a bar, print them and one summary line, and exit: 0 if
    all succeeded, else 1.  ``--json`` prints their records, else a table.  The wall
    time is counted from ``started`` (a monotonic time: the submit before the wait)."""
    with progress.Bar("waiting", len(ids), progress.shown(as_json)) as bar:
        found: list[Any] = progress.wait_all(c.wait_many if as_json else c.outcomes, ids,
                                             bar, timeout)
    if as_json:
        _dump([j.model_dump() for j in found])
    else:
        _table([[j.id, j.status, j.attempt] for j in found], ["ID", "STATUS", "TRY"])
    took = time.monotonic() - (bar.started if started is None else started)
    click.echo(progress.summary(len(found), bar.tally, took), err=True)
    sys.exit(EXIT_OK if all(j.status == "succeeded" for j in found) else EXIT_JOB_FAILED)


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", type=float, default=None, help="give up after S seconds (exit 1)")
@click.option("--json", "as_json", is_flag=True)
@_common
def wait(job_ids: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """Wait for jobs to finish; exit 0 if all succeeded, 1 if not.

    One job prints its record; several show a bar on a terminal, then a table (or
    their records with --json) and a summary line on stderr.
    """
    with _client() as c:
        if len(job_ids) > 1:
            _wait_many(c, list(dict.fromkeys(job_ids)), timeout, as_json)
        job = c.wait(job_ids[0], timeout=timeout)
        _print_job(job, as_json)
        _exit_for(job)


@main.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="keep printing new output until the job ends")
@_common
def logs(job_id: str, follow: bool) -> None:
    """A job's captured stdout, stderr and logging records (its last max_output bytes)."""
    with _client() as c:
        if not follow:
            text = c.logs(job_id)
            click.echo(text, nl=bool(text) and not text.endswith("\n"))
            return
        try:
            for chunk in c.follow_logs(job_id):
                click.echo(chunk, nl=False)
        except KeyboardInterrupt:
            pass


@main.command()
@click.argument("job_id")
@_common
def cancel(job_id: str) -> None:
    """Cancel a queued or scheduled job, or stop a running one."""
    with _client() as c:
        result = c.cancel(job_id)
    click.echo(f"{job_id}: {result['status']}" + (f" ({result['message']})"
                                                  if result.get("message") else ""))


@main.command()
@click.option("--status", type=click.Choice(
    ["scheduled", "queued", "running", "succeeded", "failed", "cancelled"]), default=None)
@click.option("--type", "job_type", default=None)
@click.option("--tag", default=None, help="KEY=VALUE")
@click.option("--limit", type=click.IntRange(1, 10000), default=50)
@click.option("--json", "as_json", is_flag=True)
@_common
def jobs(status: str | None, job_type: str | None, tag: str | None, limit: int,
         as_json: bool) -> None:
    """List jobs, newest first."""
    tag_pair = next(iter(_tags((tag,)).items())) if tag else None
    with _client() as c:
        page = c.jobs_page(status=status, type=job_type, tag=tag_pair, limit=limit)
    found = page.jobs
    if as_json:
        _dump([j.model_dump() for j in found])
        return
    _table([[j.id, j.type, j.status, f"{j.attempt}/{j.max_attempts}", _ts(j.created_at),
             (j.error or {}).get("kind") if j.status in ("failed", "cancelled") else ""]
            for j in found], ["ID", "TYPE", "STATUS", "TRY", "CREATED", "ERROR"])
    click.echo(_page_count(len(found), page.total, page.total_at_most))


def _page_count(shown: int, total: int | None, at_most: int | None) -> str:
    """'50 of 1,234'; a bound where the daemon did not count several filters out."""
    if total is not None:
        return f"{shown:,} of {total:,}"
    if at_most is not None:
        return (f"{shown:,} of at most {at_most:,} (several filters over more jobs than "
                "the daemon counts one by one)")
    return f"{shown:,} shown"


@main.command()
@click.option("--json", "as_json", is_flag=True)
@_common
def status(as_json: bool) -> None:
    """Pools, workers, queues, circuits and Redis health."""
    with _client() as c:
        st = c.status()
    r = st["redis"]
    if as_json:
        _dump(st)
        if not r.get("up"):
            sys.exit(EXIT_UNREACHABLE)
        return
    if r.get("up"):
        health = (f"redis up {r.get('version', '')} {r.get('latency_ms', '-')}ms; "
                  f"dead letters {st['dead_letters']}")
    else:
        health = "redis DOWN"
    click.echo(f"node {st['node']} pid {st['pid']} {st['phase']} up {st['uptime']:.0f}s; "
               f"{health}")
    click.echo()
    _table([[p["name"], f"{p['workers']}/{p['target']}", p["idle"], p["busy"], p["queued"],
             "DEGRADED" if p["degraded"] else "ok"] for p in st["pools"]],
           ["POOL", "WORKERS", "IDLE", "BUSY", "QUEUED", "STATE"])
    click.echo()
    _table([[w["pool"], w["pid"], w["state"], w["job"], units.size(w["rss"]), f"{w['cpu']:.0f}%",
             ",".join(map(str, w["gpu"])) if w["gpu"] else "-",
             units.gpu_memory(w.get("gpu_memory")),
             f"{w['uptime']:.0f}s", w["jobs_done"]] for w in st["workers"]],
           ["POOL", "PID", "STATE", "JOB", "RSS", "CPU", "GPU", "GPU MEM", "UPTIME", "DONE"])
    if st.get("circuits"):
        click.echo()
        _table([[c["type"], c["state"], c.get("failures", "")] for c in st["circuits"]],
               ["TYPE", "CIRCUIT", "FAILURES"])
    if not r.get("up"):
        click.echo()
        _fail(f"Redis is down ({r.get('error') or 'unreachable'}): the daemon keeps running "
              "the jobs it holds and retries Redis by itself, but takes no submits, and "
              "queues, dead letters and circuits cannot be read until it is back",
              EXIT_UNREACHABLE)


@main.command()
@click.option("--once", "show_once", is_flag=True,
              help="print one frame and exit (3 if the daemon or Redis is unreachable)")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0,
              help="seconds between frames")
@_common
def top(show_once: bool, interval: float) -> None:
    """A live view of pools, workers, queues, rates and circuits; q quits."""
    from supervisord import top as view  # rich's live display, loaded only here

    with _client() as c:
        sys.exit(view.run(c, show_once, interval))


@main.group()
def dlq() -> None:
    """The dead-letter set: jobs that ended failed."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 10000), default=100)
@click.option("--json", "as_json", is_flag=True)
@_common
def dlq_list(limit: int, as_json: bool) -> None:
    """Failed jobs, most recent failure first."""
    with _client() as c:
        found = c.dead_letters(limit)
    if as_json:
        _dump([j.model_dump() for j in found])
        return
    _table([[j.id, j.type, f"{j.attempt}/{j.max_attempts}", _ts(j.finished_at),
             (j.error or {}).get("kind"), ((j.error or {}).get("message") or "")[:60]]
            for j in found], ["ID", "TYPE", "TRY", "FAILED", "KIND", "MESSAGE"])


@dlq.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="every job in the set")
@click.option("--wait", is_flag=True, help="wait for the retried jobs to finish (exit 1 if "
              "any fails again)")
@click.option("--json", "as_json", is_flag=True, help="with --wait: their final records")
@_common
def dlq_retry(job_ids: tuple[str, ...], retry_all: bool, wait: bool, as_json: bool) -> None:
    """Run failed jobs again with fresh attempts; their history is kept."""
    if bool(job_ids) == retry_all:
        _fail("give job ids or --all", EXIT_USAGE)
    with _client() as c:
        with progress.Bar("requeueing", None, progress.shown(as_json)) as bar:
            done = c.retry_dead_letters(None if retry_all else list(job_ids))
            bar.total(len(done))
            bar.advance(len(done))
        missing = sorted(set(job_ids) - set(done))
        click.echo(f"requeued {len(done)} job(s) in {bar.elapsed:.1f} s",
                   err=wait and not missing)
        if missing:
            _fail(f"not in the dead-letter set: {', '.join(missing)}", EXIT_USAGE)
        if wait and done:
            _wait_many(c, done, None, as_json, bar.started)


@dlq.command("purge")
@click.option("--yes", "-y", is_flag=True, help="do not ask (needed off a terminal)")
@_common
def dlq_purge(yes: bool) -> None:
    """Delete every job in the dead-letter set (asks first on a terminal)."""
    with _client() as c:
        if not yes:
            if not sys.stdin.isatty():
                _fail("dlq purge deletes every failed job for good: run it on a terminal to "
                      "confirm, or pass --yes", EXIT_USAGE)
            total = c.call("dlq", action="list", limit=1)["total"]
            if not total:
                click.echo("the dead-letter set is empty")
                return
            if not click.confirm(f"delete all {total} job(s) in the dead-letter set?"):
                _fail("nothing purged", EXIT_JOB_FAILED)
        done = c.purge_dead_letters()
    click.echo(f"purged {len(done)} job(s)")


@main.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@_common
def watch(job_id: str | None, as_json: bool) -> None:
    """Stream events (state changes, progress, output); for one job, until it ends."""
    with _client() as c:
        try:
            for ev in c.events(job_id):
                if as_json:
                    click.echo(json.dumps(ev, default=str))
                    continue
                stamp = _ts(ev.get("t"))
                if ev["event"] == "state":
                    extra = f" [{ev['kind']}] {ev.get('message', '')}" if ev.get("kind") else ""
                    attempt = (f" (attempt {ev['attempt']})"
                               if ev.get("attempt") is not None else "")
                    click.echo(f"{stamp} {ev['job']} {ev['status']}{attempt}{extra}")
                elif ev["event"] == "progress":
                    click.echo(f"{stamp} {ev['job']} {ev['progress']:.0f}% {ev['message']}")
                else:
                    click.echo(f"{stamp} {ev['job']} | {ev.get('data', '')}")
        except KeyboardInterrupt:
            pass


@main.command()
@_common
def reload() -> None:
    """Re-read the daemon's config file (as SIGHUP)."""
    with _client() as c:
        result = c.reload()
    if result["errors"]:
        for err in result["errors"]:
            click.echo(f"  {err['loc']}: {err['msg']}", err=True)
        _fail("the config file is invalid; the daemon keeps its running config", EXIT_USAGE)
    click.echo("reloaded")


@main.command()
@click.option("--fast", is_flag=True, help="requeue running jobs and stop now (as SIGQUIT)")
@click.option("--wait/--no-wait", "wait_", default=True, help="wait until the daemon is gone")
@_common
def stop(fast: bool, wait_: bool) -> None:
    """Stop the daemon gracefully (as SIGTERM), or fast."""
    with _client() as c:
        info = c.ping()
        c.shutdown(fast=fast)
    click.echo(f"stopping node {info['node']} pid {info['pid']}")
    while wait_ and _running(info["pid"]):
        time.sleep(0.1)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs; an exited daemon its parent has not reaped yet (a
    zombie, e.g. under a shell or test harness that waits later) has stopped."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone (or not ours to look at, as os.kill(pid, 0) treated it)
        return False


@main.group("config")
def config_group() -> None:
    """Config file tools."""


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a config file and import what it names; print every error with its key."""
    from supervisord import imports_check
    from supervisord.pool import host

    try:
        data = config_mod.read(path)
    except ConfigError as exc:
        _config_errors(exc)  # not TOML, or no such file: nothing more to look at
    errors: list[dict] = []
    try:
        cfg = config_mod.validate(data)
        # The defaults too (a config without [jobs] runs the demo types).
        names = cfg.model_dump(by_alias=True, include={"pools", "jobs"})
    except ConfigError as exc:
        cfg, names = None, data
        errors.extend(exc.errors)
    if cfg is not None:
        try:
            host.check(cfg).gpus.close()  # limits this box cannot enforce are errors too
        except ConfigError as exc:
            errors.extend(exc.errors)
    errors.extend(imports_check.check(imports_check.targets(names)))
    if errors:
        _config_errors(ConfigError(f"{path}: {len(errors)} error(s)", errors=errors))
    click.echo(f"{path}: ok ({len(cfg.pools)} pool(s), {len(cfg.jobs)} job type(s); "
               "every handler, init and schema imports)")


if __name__ == "__main__":
    main()
