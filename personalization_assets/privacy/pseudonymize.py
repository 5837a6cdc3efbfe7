"""Moved to `personalization_assets.core.pseudonymize` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.pseudonymize`."""

import sys

from personalization_assets.core import pseudonymize as _moved

sys.modules[__name__] = _moved
