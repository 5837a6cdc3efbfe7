"""Moved to `personalization_assets.core.tracking_plan` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.tracking_plan`."""

import sys

from personalization_assets.core import tracking_plan as _moved

sys.modules[__name__] = _moved
