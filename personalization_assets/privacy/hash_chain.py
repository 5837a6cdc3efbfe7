"""Moved to `personalization_assets.core.hash_chain` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.hash_chain`."""

import sys

from personalization_assets.core import hash_chain as _moved

sys.modules[__name__] = _moved
