"""Moved to `personalization_assets.core.quarantine_match` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.quarantine_match`."""

import sys

from personalization_assets.core import quarantine_match as _moved

sys.modules[__name__] = _moved
