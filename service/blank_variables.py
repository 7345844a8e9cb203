"""Blank environment variables that a library would take for set, dropped before it reads them.

Every setting of the service treats a blank value as unset (service/config.py),
and `.env.example` lists some blank. prometheus_client does not: it switches to
multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` merely exists (decided when it
is imported) and then writes its sample files into the working directory. This
module is the package's first import (service/__init__.py), so the variable is
gone before any module imports prometheus_client. It imports nothing of ours.
"""

from __future__ import annotations

import os

READ_AS_SET_WHEN_BLANK = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")

for _name in READ_AS_SET_WHEN_BLANK:
    if _name in os.environ and not os.environ[_name].strip():
        del os.environ[_name]
