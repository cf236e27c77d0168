# syntax=docker/dockerfile:1.7
# The timm trainer service, tp-trainer-timm. Build from the repository root (the build context):
#   docker build -f deploy/docker/trainer-timm.Dockerfile -t trainingplatform/trainer-timm:dev .
# CPU-only torch by default; CUDA torch with (docs/deployment.md lists the index URLs):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -f ... -t ...:cuda .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build: torch from the chosen index first (its own layer, reused while the code changes), then the SDK, the
# trainer and the rest of their dependencies into a virtual environment.
FROM ${PYTHON_IMAGE} AS build
# The versions services/trainer_timm/pyproject.toml pins (tests/deploy checks that they agree).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY sdk/ sdk/
COPY services/trainer_timm/ services/trainer_timm/
# The two wheels are installed by path, not by name: a name is looked up on PyPI too, where a higher version of
# it would win (dependency confusion). The trainer's requirement on trainingplatform-sdk[...] is met by the path.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels ./sdk ./services/trainer_timm \
 && /opt/venv/bin/pip install /wheels/*.whl \
 && /opt/venv/bin/python -c "import torch, torchvision; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}'"

# Runtime: the virtual environment on a clean base, run by a fixed unprivileged user (UID 10001, as in deploy/k8s).
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 tp \
 && useradd --uid 10001 --gid 10001 --home-dir /home/tp --create-home --shell /usr/sbin/nologin tp \
 && install -d -o 10001 -g 10001 -m 0750 /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/grpc_health_check.py /opt/tp/grpc_health_check.py
# Trainers never download: HF_HUB_OFFLINE keeps timm off the Hugging Face hub, and pretrained weights are read from
# /models (a read-only volume prepared beforehand; see docs/deployment.md). Caches go to /tmp, the one writable place
# besides /data when the root file system is read-only. Tokens and storage keys come from the environment at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TP_TRAINER_LISTEN=0.0.0.0:50061 \
    TP_DATA_DIR=/data \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/models/huggingface \
    TORCH_HOME=/models/torch \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /data
EXPOSE 50061
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/tp/grpc_health_check.py"]
ENTRYPOINT ["tp-trainer-timm"]
