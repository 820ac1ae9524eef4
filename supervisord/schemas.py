"""Input schemas: the pydantic models job types name, imported once in the master."""

from __future__ import annotations

from typing import Any

from supervisord.config import Config
from supervisord.errors import ConfigError


def resolve_schemas(cfg: Config) -> dict[str, Any]:
    from worker.runtime import resolve

    schemas = {}
    for name, jt in cfg.jobs.items():
        if jt.schema_:
            try:
                schemas[name] = resolve(jt.schema_)
            except Exception as exc:
                raise ConfigError(f"jobs.{name}.schema: cannot import {jt.schema_}: {exc}",
                                  errors=[{"loc": f"jobs.{name}.schema",
                                           "msg": f"cannot import {jt.schema_}: {exc}"}]
                                  ) from None
    return schemas
