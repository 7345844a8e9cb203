"""WSGI entry point for gunicorn (`wsgi:app`) and the `flask` CLI."""

from service import create_app

app = create_app()
