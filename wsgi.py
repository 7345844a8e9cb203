"""WSGI entry point for gunicorn (`wsgi:app`) and the `flask` CLI."""

import sys

from service import create_app
from service.config import ConfigError

# gunicorn's "worker failed to boot": its master stops instead of starting the worker again
GUNICORN_WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except ConfigError as exc:  # one clear line naming the variable, no traceback
    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(GUNICORN_WORKER_BOOT_ERROR if "gunicorn.arbiter" in sys.modules else 1)
