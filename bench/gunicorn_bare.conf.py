"""gunicorn settings for the bare benchmark apps: gunicorn's defaults (sync workers), no hooks.

Passed explicitly with `-c`, because gunicorn started from the repository root
otherwise loads ./gunicorn.conf.py, the service's (drain hook, max_requests, ...).
"""
