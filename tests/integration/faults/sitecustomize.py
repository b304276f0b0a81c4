"""Loaded by every Python process started with this directory on PYTHONPATH (the workers of the
fault matrix, their spawned horses): arms the injector when RQWS_FAULT_DIR is set."""

import os

if os.environ.get("RQWS_FAULT_DIR"):
    import injector

    injector.install()
