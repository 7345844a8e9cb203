"""WSGI entry point for gunicorn (`wsgi:app`) and the `flask` CLI."""

import sys

from service import create_app
from service.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:  # one clear line naming the variable, no traceback
    sys.exit(f"configuration error: {exc}")
