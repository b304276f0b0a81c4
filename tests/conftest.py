import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT / "tests", ROOT / "tests" / "jobs"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

try:  # the bad-input corpus (tests/badinput.py); hypothesis is in the test extra
    from hypothesis import settings as _hypothesis

    _hypothesis.register_profile("ci", max_examples=400, derandomize=True, database=None, print_blob=True)
    """The default: the same examples on every run (no seed to record); a failure prints its blob."""
    _hypothesis.register_profile("explore", max_examples=2000, database=None, print_blob=True)
    """--hypothesis-profile=explore: random draws, more of them; a failure prints its seed."""
    _hypothesis.load_profile("ci")
except ImportError:
    pass
