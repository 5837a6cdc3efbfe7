"""Moved to `personalization_assets.core.audit` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.audit`."""

import sys

from personalization_assets.core import audit as _moved

sys.modules[__name__] = _moved
