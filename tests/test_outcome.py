"""Retry policy as pure functions: supervisord.policies.retry.decide and backoff."""

from __future__ import annotations

import random

import pytest

from supervisord.config import JobTypeConfig
from supervisord.policies.retry import backoff, decide
from supervisord.states import FailureKind


def policy(**kw) -> JobTypeConfig:
    return JobTypeConfig(handler="examples.demo:noop", **kw)


def run_decide(p: JobTypeConfig, kind: FailureKind, *, attempt: int = 1,
               max_attempts: int | None = None, crashes: int = 0, rate_limited: int = 0,
               timeout: float | None = 10.0, retry_after: float | None = None):
    return decide(p, kind, attempt=attempt,
                  max_attempts=p.max_attempts if max_attempts is None else max_attempts,
                  crashes=crashes, rate_limited=rate_limited, timeout=timeout,
                  retry_after=retry_after)


# -- backoff ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempt,ceiling", [(1, 0.5), (2, 1.5), (3, 4.5), (4, 10.0),
                                             (10, 10.0)])
def test_backoff_full_jitter_within_bounds(attempt, ceiling):
    p = policy(backoff={"base": 0.5, "factor": 3.0, "max": 10.0})
    rng = random.Random(1234)
    values = [backoff(p, attempt, rng) for _ in range(2000)]
    assert all(0.0 <= v <= ceiling for v in values)
    # Full jitter: spread over the whole range, not clustered at the ceiling.
    assert min(values) < ceiling * 0.1
    assert max(values) > ceiling * 0.9
    assert 0.4 * ceiling < sum(values) / len(values) < 0.6 * ceiling


def test_backoff_uses_given_rng_deterministically():
    p = policy()
    a = [backoff(p, 3, random.Random(7)) for _ in range(3)]
    b = [backoff(p, 3, random.Random(7)) for _ in range(3)]
    assert a == b


def test_backoff_zero_base_means_no_wait():
    p = policy(backoff={"base": 0.0, "factor": 2.0, "max": 60.0})
    assert {backoff(p, n) for n in range(1, 6)} == {0.0}


# -- decide ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [FailureKind.EXCEPTION, FailureKind.TRANSIENT,
                                  FailureKind.TIMEOUT])
def test_retryable_kinds_retry_and_burn_an_attempt(kind):
    p = policy(max_attempts=3, backoff={"base": 1.0, "factor": 2.0, "max": 60.0})
    d = run_decide(p, kind, attempt=2)
    assert d.retry
    assert d.burn_attempt
    assert not d.rate_limited
    assert 0.0 <= d.delay <= 2.0  # base * factor^(2-1)
    assert "3/3" in d.reason


def test_gives_up_at_max_attempts():
    p = policy(max_attempts=3)
    d = run_decide(p, FailureKind.EXCEPTION, attempt=3)
    assert not d.retry
    assert "3 attempts" in d.reason


def test_per_job_max_attempts_overrides_type():
    p = policy(max_attempts=3)
    assert run_decide(p, FailureKind.EXCEPTION, attempt=3, max_attempts=5).retry
    assert not run_decide(p, FailureKind.EXCEPTION, attempt=1, max_attempts=1).retry


@pytest.mark.parametrize("kind", [FailureKind.PERMANENT, FailureKind.INVALID,
                                  FailureKind.CANCELLED])
def test_permanent_like_kinds_never_retried(kind):
    p = policy(max_attempts=100, retry_on=[k.value for k in FailureKind])
    for attempt in (1, 2, 50):
        d = run_decide(p, kind, attempt=attempt)
        assert not d.retry, (kind, attempt)


def test_kind_outside_retry_on_fails_at_once():
    p = policy(max_attempts=5, retry_on=["transient"])
    d = run_decide(p, FailureKind.EXCEPTION, attempt=1)
    assert not d.retry
    assert "retry_on" in d.reason
    assert run_decide(p, FailureKind.TRANSIENT, attempt=1).retry


def test_memory_not_retried_by_default():
    assert not run_decide(policy(max_attempts=5), FailureKind.MEMORY).retry
    assert run_decide(policy(max_attempts=5, retry_on=["memory"]), FailureKind.MEMORY).retry


def test_crash_retries_at_once_then_poison_pill():
    p = policy(max_attempts=10, max_crashes=2)
    first = run_decide(p, FailureKind.CRASH, attempt=1, crashes=0)
    assert first.retry
    assert first.crash
    assert first.delay == 0.0
    second = run_decide(p, FailureKind.CRASH, attempt=2, crashes=1)
    assert not second.retry
    assert second.crash
    assert "poison" in second.reason


def test_crash_poison_pill_threshold_configurable():
    p = policy(max_attempts=10, max_crashes=4)
    assert all(run_decide(p, FailureKind.CRASH, attempt=c + 1, crashes=c).retry
               for c in range(3))
    assert not run_decide(p, FailureKind.CRASH, attempt=4, crashes=3).retry
    # max_crashes = 1: the first crash already fails the job.
    assert not run_decide(policy(max_crashes=1), FailureKind.CRASH, crashes=0).retry


def test_crash_still_bounded_by_max_attempts():
    p = policy(max_attempts=2, max_crashes=5)
    assert not run_decide(p, FailureKind.CRASH, attempt=2, crashes=1).retry


def test_rate_limited_does_not_burn_attempts():
    p = policy(max_attempts=2, max_rate_limited=5)
    # Even at the last attempt a rate limit is retried, after retry_after.
    d = run_decide(p, FailureKind.RATE_LIMITED, attempt=2, rate_limited=0, retry_after=7.5)
    assert d.retry
    assert not d.burn_attempt
    assert d.rate_limited
    assert d.delay == 7.5


def test_rate_limited_default_delay_when_no_retry_after():
    d = run_decide(policy(), FailureKind.RATE_LIMITED, retry_after=None)
    assert d.retry
    assert d.delay > 0


def test_rate_limited_bounded_by_max_rate_limited():
    p = policy(max_rate_limited=3)
    assert run_decide(p, FailureKind.RATE_LIMITED, rate_limited=2, retry_after=1).retry
    d = run_decide(p, FailureKind.RATE_LIMITED, rate_limited=3, retry_after=1)
    assert not d.retry
    assert not run_decide(policy(max_rate_limited=0), FailureKind.RATE_LIMITED).retry


def test_lost_requeued_without_burning_attempt():
    p = policy(max_attempts=1)
    d = run_decide(p, FailureKind.LOST, attempt=1)
    assert d.retry
    assert not d.burn_attempt
    assert d.delay == 0.0


def test_timeout_growth_lengthens_next_timeout():
    p = policy(max_attempts=3, timeout_growth=2.0)
    d = run_decide(p, FailureKind.TIMEOUT, attempt=1, timeout=10.0)
    assert d.retry
    assert d.timeout == pytest.approx(20.0)


def test_no_timeout_growth_by_default_or_for_other_kinds():
    assert run_decide(policy(), FailureKind.TIMEOUT, timeout=10.0).timeout is None
    p = policy(timeout_growth=3.0)
    assert run_decide(p, FailureKind.EXCEPTION, timeout=10.0).timeout is None
    assert run_decide(p, FailureKind.TIMEOUT, timeout=None).timeout is None
