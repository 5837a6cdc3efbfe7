"""Moved to `personalization_assets.core.pseudonym_keys` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.pseudonym_keys`."""

import sys

from personalization_assets.core import pseudonym_keys as _moved

sys.modules[__name__] = _moved
