# syntax=docker/dockerfile:1.7
# The web dashboard, tp-dashboard. Build from the repository root (the build context):
#   docker build -f deploy/docker/dashboard.Dockerfile -t trainingplatform/dashboard:dev .
# BuildKit reads dashboard.Dockerfile.dockerignore beside this file, so the context holds only what is copied.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build: wheels of the SDK and the dashboard, installed with their dependencies into a virtual environment.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY sdk/ sdk/
COPY services/dashboard/ services/dashboard/
# The two wheels are installed by path, not by name: a name is looked up on PyPI too, where a higher version of
# it would win (dependency confusion). The dashboard's requirement on trainingplatform-sdk is met by the path.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels ./sdk ./services/dashboard \
 && /opt/venv/bin/pip install /wheels/*.whl

# Runtime: the virtual environment on a clean base, run by a fixed unprivileged user (UID 10001, as in deploy/k8s).
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 tp \
 && useradd --uid 10001 --gid 10001 --home-dir /home/tp --create-home --shell /usr/sbin/nologin tp \
 && install -d -o 10001 -g 10001 -m 0750 /data
COPY --from=build /opt/venv /opt/venv
# The dashboard binds loopback by default; in a container it must listen on every address to be reached. Its
# tokens (TP_AUTH_TOKEN, READ_AUTH_TOKEN, TP_DASHBOARD_TOKEN) come from the environment at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TP_DASHBOARD_LISTEN=0.0.0.0:8080 \
    TP_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
EXPOSE 8080
# GET /healthz needs no session; the port is the one TP_DASHBOARD_LISTEN names.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['TP_DASHBOARD_LISTEN'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["tp-dashboard"]
