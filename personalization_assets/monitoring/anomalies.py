"""Moved to `personalization_assets.checks.anomalies` (a check library the raw and warehouse layers
use). This alias keeps old imports working; new code imports `personalization_assets.checks.anomalies`."""

import sys

from personalization_assets.checks import anomalies as _moved

sys.modules[__name__] = _moved
