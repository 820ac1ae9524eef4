"""Config parsing and validation: sizes, defaults, errors with key paths, security."""

from __future__ import annotations

import pytest

from supervisord import config
from supervisord.errors import ConfigError

# -- sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    (1024, 1024),
    (0, 0),
    ("0", 0),
    ("512", 512),
    ("512B", 512),
    ("1KiB", 1024),
    ("1kib", 1024),
    ("1KB", 1000),
    ("1k", 1000),
    ("2MiB", 2 * 1024**2),
    ("512MB", 512 * 1000**2),
    ("1.5GiB", int(1.5 * 1024**3)),
    ("24GiB", 24 * 1024**3),
    ("1TiB", 1024**4),
    (" 3 MiB ", 3 * 1024**2),
    (None, None),
])
def test_parse_size(text, expected):
    assert config.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["12 parsecs", "GiB", "-1GiB", "1.2.3MB", "", -5, True])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        config.parse_size(bad)


def test_size_keys_accept_strings_in_config():
    cfg = config.validate({
        "pools": [{"name": "p", "memory_limit": "24GiB", "max_rss": "20GiB"}],
        "jobs": {"x": {"handler": "examples.demo:noop", "max_payload": "1KiB"}},
        "api": {"max_message": "2MiB"},
    })
    assert cfg.pools[0].memory_limit == 24 * 1024**3
    assert cfg.pools[0].max_rss == 20 * 1024**3
    assert cfg.jobs["x"].max_payload == 1024
    assert cfg.api.max_message == 2 * 1024**2


def test_bad_size_in_config_names_key():
    with pytest.raises(ConfigError) as info:
        config.validate({"pools": [{"name": "p", "max_rss": "lots"}]})
    assert [e["loc"] for e in info.value.errors] == ["pools[0].max_rss"]
    assert "lots" in info.value.errors[0]["msg"]


# -- defaults ----------------------------------------------------------------------------


def test_defaults_without_a_file():
    cfg = config.load(None)
    assert cfg.redis.url == "embedded"
    assert cfg.redis.prefix == "jobsup"
    assert cfg.api.endpoint == "tcp://127.0.0.1:7700"
    assert cfg.api.events == "tcp://127.0.0.1:7701"
    assert cfg.api.insecure is False
    assert cfg.metrics.listen == "127.0.0.1:9700"
    assert cfg.daemon.shutdown_grace == 30
    assert cfg.daemon.node_id
    assert [p.name for p in cfg.pools] == ["default"]
    assert cfg.pools[0].workers >= 1
    # The demo job types come with the defaults.
    for name in ("noop", "echo", "sleep", "add", "flaky", "fail", "crash"):
        assert name in cfg.jobs
        assert cfg.pool_of(name) == "default"


def test_job_type_defaults():
    jt = config.JobTypeConfig(handler="examples.demo:noop")
    assert jt.max_attempts == 3
    assert jt.max_crashes == 2
    assert jt.max_payload == 1024 * 1024
    assert jt.priority == 0
    assert jt.timeout_growth == 1.0
    assert jt.backoff.base == 1.0 and jt.backoff.factor == 2.0 and jt.backoff.max == 60.0
    assert jt.circuit_breaker is None
    assert {k.value for k in jt.retry_on} == {"exception", "transient", "timeout", "crash"}
    cb = config.CircuitBreaker()
    assert (cb.failures, cb.open_for) == (5, 30)


def test_explicit_jobs_replace_demo_jobs_and_pool_of():
    cfg = config.validate({
        "pools": [{"name": "cpu", "workers": 2}, {"name": "gpu", "workers": 1, "gpus": [0]}],
        "jobs": {"a": {"handler": "examples.demo:noop"},
                 "b": {"handler": "examples.demo:noop", "pool": "gpu"}},
    })
    assert set(cfg.jobs) == {"a", "b"}
    assert cfg.pool_of("a") == "cpu"
    assert cfg.pool_of("b") == "gpu"


def test_schema_alias():
    cfg = config.validate({"jobs": {"u": {"handler": "examples.demo:upper",
                                          "schema": "examples.demo:EchoInput"}}})
    assert cfg.jobs["u"].schema_ == "examples.demo:EchoInput"


# -- errors with key paths -------------------------------------------------------------


def _errors(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        config.validate(data)
    return {e["loc"]: e["msg"] for e in info.value.errors}


def test_errors_carry_key_paths():
    errs = _errors({
        "pools": [{"name": "ok"}, {"name": "p2", "workers": -1}],
        "jobs": {"x": {"timeout": 5}, "y": {"handler": "not an import path"}},
    })
    assert set(errs) == {"pools[1].workers", "jobs.x.handler", "jobs.y.handler"}
    assert "required" in errs["jobs.x.handler"].lower()


def test_unknown_key_is_an_error_naming_it():
    errs = _errors({"daemon": {"nod_id": "x"}, "pools": [{"name": "p", "worker": 2}]})
    assert set(errs) == {"daemon.nod_id", "pools[0].worker"}
    assert all("not permitted" in m for m in errs.values())
    assert "jobz" in _errors({"jobz": {}})


def test_cross_references_are_checked():
    errs = _errors({"pools": [{"name": "a"}], "jobs": {"x": {"handler": "m:f", "pool": "nope"}}})
    assert list(errs) == ["jobs.x.pool"]
    assert "nope" in errs["jobs.x.pool"]
    errs = _errors({"jobs": {"x": {"handler": "m:f", "fallback": "ghost"}}})
    assert list(errs) == ["jobs.x.fallback"]
    assert "ghost" in errs["jobs.x.fallback"]
    with pytest.raises(ConfigError) as info:
        config.validate({"pools": [{"name": "a"}, {"name": "a"}]})
    assert "unique" in str(info.value.errors)


@pytest.mark.parametrize("section,data,loc", [
    ("redis", {"url": "http://localhost"}, "redis"),
    ("daemon", {"heartbeat_interval": 5, "heartbeat_timeout": 1}, "daemon"),
    ("daemon", {"log_level": "loud"}, "daemon.log_level"),
    ("metrics", {"listen": "nonsense"}, "metrics"),
    ("api", {"endpoint": "http://127.0.0.1:80"}, "api"),
])
def test_section_validators(section, data, loc):
    errs = _errors({section: data})
    assert loc in errs, errs


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "absent.toml")
    assert "does not exist" in info.value.message


def test_load_non_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("this is [not toml\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert "not valid TOML" in info.value.message
    assert info.value.errors and info.value.errors[0]["msg"]


def test_load_valid_file(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('[daemon]\nnode_id = "n1"\n\n[[pools]]\nname = "cpu"\nworkers = 3\n'
                    '\n[jobs.r]\nhandler = "examples.demo:echo"\nmax_payload = "1KiB"\n')
    cfg = config.load(path)
    assert cfg.daemon.node_id == "n1"
    assert cfg.pools[0].workers == 3
    assert cfg.jobs["r"].max_payload == 1024


# -- security: non-loopback API needs curve keys or insecure = true --------------------


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:7700", "tcp://10.1.2.3:7700",
                                      "tcp://example.com:7700", "tcp://*:7700"])
def test_public_endpoint_without_keys_is_an_error(endpoint):
    errs = _errors({"api": {"endpoint": endpoint}})
    assert "api" in errs
    assert "insecure" in errs["api"]
    assert "curve" in errs["api"]


def test_public_events_endpoint_also_checked():
    assert "api" in _errors({"api": {"events": "tcp://0.0.0.0:7701"}})


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:7700", "tcp://localhost:7700",
                                      "tcp://[::1]:7700", "tcp://127.0.0.2:7700",
                                      "ipc:///tmp/jobsup.sock"])
def test_loopback_and_ipc_are_fine(endpoint):
    assert config.validate({"api": {"endpoint": endpoint}}).api.endpoint == endpoint


def test_insecure_true_allows_public_endpoint():
    cfg = config.validate({"api": {"endpoint": "tcp://0.0.0.0:7700", "insecure": True}})
    assert cfg.api.insecure


def test_curve_keys_allow_public_endpoint():
    cfg = config.validate({"api": {"endpoint": "tcp://0.0.0.0:7700",
                                   "curve_secret_key": "/etc/jobsup/server.key_secret",
                                   "curve_allowed_clients": "/etc/jobsup/clients"}})
    assert cfg.api.curve_secret_key
    errs = _errors({"api": {"endpoint": "tcp://0.0.0.0:7700",
                            "curve_secret_key": "/etc/jobsup/server.key_secret"}})
    assert "curve_allowed_clients" in errs["api"]
