# syntax=docker/dockerfile:1.7
# The backend, tp-backend. Build from the repository root (the build context):
#   docker build -f deploy/docker/backend.Dockerfile -t trainingplatform/backend:dev .
# BuildKit reads backend.Dockerfile.dockerignore beside this file, so the context holds only what is copied.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build: wheels of the SDK, the backend and every dependency, installed into a virtual environment.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY sdk/ sdk/
COPY services/backend/ services/backend/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip wheel --wheel-dir /wheels ./sdk ./services/backend \
 && /opt/venv/bin/pip install --no-index --find-links /wheels trainingplatform-backend

# Runtime: the virtual environment on a clean base, run by a fixed unprivileged user (UID 10001, as in deploy/k8s).
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 tp \
 && useradd --uid 10001 --gid 10001 --home-dir /home/tp --create-home --shell /usr/sbin/nologin tp \
 && install -d -o 10001 -g 10001 -m 0750 /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/grpc_health_check.py /opt/tp/grpc_health_check.py
# Tokens and the database URL come from the environment at run time (deploy/.env, a Kubernetes Secret).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TP_BACKEND_LISTEN=0.0.0.0:50051 \
    TP_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/tp/grpc_health_check.py"]
ENTRYPOINT ["tp-backend"]
