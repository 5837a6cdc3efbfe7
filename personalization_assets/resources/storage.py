"""Moved to `personalization_assets.core.storage` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.storage`."""

import sys

from personalization_assets.core import storage as _moved

sys.modules[__name__] = _moved
