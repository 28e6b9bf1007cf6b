"""Test-suite settings: hypothesis runs a fixed set of examples unless asked to explore.

CI must fail only on real regressions, so property tests are derandomized by default;
``HYPOTHESIS_PROFILE=explore pytest`` draws fresh examples (and more of them) to hunt for bugs.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=1000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
