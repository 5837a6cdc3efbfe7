"""Moved to `personalization_assets.core.secrets` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.secrets`."""

import sys

from personalization_assets.core import secrets as _moved

sys.modules[__name__] = _moved
