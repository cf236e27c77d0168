# syntax=docker/dockerfile:1.7
# The MLflow tracking server of docker-compose.yml: runs in PostgreSQL, artifacts proxied to S3 (SeaweedFS there).
#   docker build -f deploy/docker/mlflow.Dockerfile -t trainingplatform/mlflow:dev .
# The backend store, the artifact destination and the allowed host names are given at run time (docker-compose.yml).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The server's version follows the trainers' client (mlflow>=3.0,<4 in services/trainer_*/pyproject.toml).
ARG MLFLOW_VERSION=3.17.2
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install "mlflow==${MLFLOW_VERSION}" "psycopg[binary]>=3.2,<4" "boto3>=1.34"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 mlflow \
 && useradd --uid 10001 --gid 10001 --home-dir /home/mlflow --create-home --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/mlflow
EXPOSE 5000
# /health is exempt from MLflow's Host-header check, so a loopback request answers whatever --allowed-hosts says.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
