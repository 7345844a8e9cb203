# syntax=docker/dockerfile:1
# tokenpool production image: gunicorn serving wsgi:app on :8000.
#   docker build -t tokenpool .
#   docker run --env-file .env -p 8000:8000 tokenpool
# One-off commands use the same image:
#   docker run --env-file .env tokenpool flask --app wsgi db upgrade

ARG PYTHON_IMAGE=python:3.11-slim

# --- build stage: a virtualenv with the pinned runtime dependencies --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Only requirements.txt first, so this layer is rebuilt only when the
# dependencies change, not on every code change.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --upgrade pip \
 && pip install -r /tmp/requirements.txt

# --- runtime stage ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} tokenpool \
 && useradd --system --uid ${APP_UID} --gid tokenpool --home-dir /app --shell /usr/sbin/nologin tokenpool

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_ENV=production \
    BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY --chown=root:root docker/entrypoint.sh /usr/local/bin/tokenpool-entrypoint
COPY --chown=root:root wsgi.py gunicorn.conf.py ./
COPY --chown=root:root migrations ./migrations
COPY --chown=root:root service ./service
# The code stays root-owned and read-only for the app user; only the
# instance folder and the metrics directory are writable.
RUN chmod 0755 /usr/local/bin/tokenpool-entrypoint \
 && mkdir -p /app/instance /tmp/prometheus \
 && chown tokenpool:tokenpool /app/instance /tmp/prometheus

USER 10001:10001
EXPOSE 8000

# Load-balancer check: /healthz touches no dependency, so a database outage
# does not make Docker restart the container. It answers within
# DB_DEADLINE_SECONDS + 1 (4 s by default) even while the database hangs.
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=5).status == 200 else 1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tokenpool-entrypoint"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
