"""Moved to `personalization_assets.core.policies` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.policies`."""

import sys

from personalization_assets.core import policies as _moved

sys.modules[__name__] = _moved
