"""Fixtures shared by every test directory, and the suite's Hypothesis profile."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fixtures.plugin"]

# No per-example deadline and no "too slow" health check anywhere: the suite runs on 4 xdist
# workers beside other engineers' tests, and at a load average of 30 an example that takes 5 ms
# on a quiet machine takes over Hypothesis's 200 ms default, which fails the test as
# DeadlineExceeded or FlakyFailure though nothing is wrong. The number of examples is the
# test's own business (each @settings still sets it); this is only the default they inherit.
settings.register_profile("warren", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("warren")
