"""``config check`` imports what a config names, in a Python process of its own.

A config can be valid TOML with every key right and still fail at ``run``: a
handler path with a typo, an ``init`` hook that is not callable, a ``schema``
that is not a pydantic model.  Those are only found by importing them, and
importing runs their modules' code, so it happens in a child interpreter
(``python -m supervisord.imports_check``, the paths on stdin, the errors on
stdout as JSON): nothing is imported into the CLI, and a module that hangs or
exits cannot take the check with it.  Every path is tried, so that one run
reports every error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# What each kind of path must resolve to, and how to say it is not.
KINDS = ("handler", "init", "schema")
_TIMEOUT = 120.0  # seconds the child may take to import everything


def targets(data: dict) -> list[dict]:
    """Every import path in a config's data (raw TOML or a validated Config dumped by
    alias): ``{"loc", "path", "kind"}`` each."""
    found = []
    for n, pool in enumerate(data.get("pools") or []):
        if isinstance(pool, dict) and isinstance(pool.get("init"), str):
            found.append({"loc": f"pools[{n}].init", "path": pool["init"], "kind": "init"})
    jobs = data.get("jobs")
    for name, job in (jobs.items() if isinstance(jobs, dict) else ()):
        if not isinstance(job, dict):
            continue
        for kind in ("handler", "schema"):
            if isinstance(job.get(kind), str):
                found.append({"loc": f"jobs.{name}.{kind}", "path": job[kind], "kind": kind})
    return found


def check(items: list[dict], cwd: str | None = None) -> list[dict]:
    """Import each path in a child interpreter; ``{"loc", "msg"}`` for each that fails.

    The child runs where the daemon would (``cwd``, default the current
    directory, is first on its ``sys.path``, as it is for workers).
    """
    if not items:
        return []
    env = dict(os.environ)
    here = cwd or os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "supervisord.imports_check"],
                              input=json.dumps(items), capture_output=True, text=True,
                              cwd=here, env=env, timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        return [{"loc": "(imports)", "msg": f"importing the handlers took over {_TIMEOUT:g}s; "
                 "does a module do slow work at import time?"}]
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr or proc.stdout).strip()[-500:]
        return [{"loc": "(imports)", "msg": f"the import check exited with {proc.returncode} "
                 f"before it finished (a module ended the process?): {tail}"}]


def _resolve(path: str, kind: str) -> str | None:
    """None if ``path`` is what ``kind`` needs, else why not."""
    import importlib

    module, _, name = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except BaseException as exc:  # a module's import may raise anything, SystemExit too
        return f"cannot import module {module!r}: {type(exc).__name__}: {exc}"
    if not hasattr(mod, name):
        near = sorted(n for n in dir(mod) if not n.startswith("_") and
                      (n.startswith(name[:3]) or name.startswith(n[:3])))[:5]
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        return f"module {module!r} has no {name!r}{hint}"
    obj = getattr(mod, name)
    if kind == "schema":
        from pydantic import BaseModel

        if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
            return f"{path} is a {type(obj).__name__}, not a pydantic model (a BaseModel class)"
    elif not callable(obj):
        return f"{path} is a {type(obj).__name__}, not a callable"
    return None


def _main() -> None:
    items: list[dict[str, Any]] = json.loads(sys.stdin.read() or "[]")
    sys.path.insert(0, os.getcwd())
    errors = []
    for item in items:
        why = _resolve(item["path"], item["kind"])
        if why:
            errors.append({"loc": item["loc"], "msg": why})
    sys.stdout.flush()
    print("\n" + json.dumps(errors), flush=True)


if __name__ == "__main__":
    _main()
