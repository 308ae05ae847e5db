"""Configures logging when imported: the forkserver's preload imports it (test_forkserver_preload).

A module that sets up a handler at import is what ``set_forkserver_preload`` users preload:
every worker forked from the server then starts with that handler already attached.
"""

from __future__ import annotations

import logging
import os

logging.basicConfig(filename=os.environ["PRELOAD_LOG"], level=logging.INFO, format="preload %(message)s")
