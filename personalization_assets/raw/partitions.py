"""Moved to `personalization_assets.core.partitions` (the core every layer may import). This alias keeps old imports working; new code
imports `personalization_assets.core.partitions`."""

import sys

from personalization_assets.core import partitions as _moved

sys.modules[__name__] = _moved
