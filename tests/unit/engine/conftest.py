"""Engine test settings: Hypothesis profiles sized so the engine suite stays well under 90 s.

``ENGINE_HYPOTHESIS_PROFILE=engine-thorough`` runs many more examples (a soak, not for CI).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "engine",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "engine-thorough",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ENGINE_SETTINGS = settings.get_profile(os.environ.get("ENGINE_HYPOTHESIS_PROFILE", "engine"))
