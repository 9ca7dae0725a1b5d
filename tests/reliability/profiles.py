"""Hypothesis profiles of the reliability suite.

``ci`` (the default) is derandomized with small example budgets so that the folder is
deterministic and fast; ``long`` (``HYPOTHESIS_PROFILE=long``) multiplies every budget by
``LONG_SCALE`` and draws fresh random examples on each run, for local bug hunting.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"
LONG_SCALE = 20

_COMMON = dict(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
    print_blob=True,
)
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("long", derandomize=False, **_COMMON)

PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"{PROFILE_ENV} must be 'ci' or 'long', got {PROFILE!r}")
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """The example budget of a property: ``n`` in the ``ci`` profile, more in ``long``."""
    return n * LONG_SCALE if PROFILE == "long" else n
