# champion's image: the `champion` CLI, run one step per container (Argo Workflows, Kubernetes Jobs).
#
#   docker build -t champion:0.1.0 .
#
# CPU by default: torch and torchvision come from PyTorch's CPU wheel index (no CUDA libraries, a
# fraction of the size). For NVIDIA GPUs, build on a CUDA runtime image with the matching index:
#
#   docker build -t champion:0.1.0-cuda \
#       --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# Every direct dependency is installed at the version constraints.txt pins (scripts/lock_deps.py
# writes it from the environment the tests passed in).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/champion \
    PATH=/opt/champion/bin:$PATH \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

# The python images have Python; the CUDA images are plain Ubuntu (24.04: Python 3.12) and need it installed.
# champion runs in its own virtual environment, apart from any Python packages of the base image.
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV"

# A numeric, non-root user: Kubernetes can only verify `runAsNonRoot: true` against a numeric UID.
RUN groupadd --gid 10001 champion \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/champion --shell /usr/sbin/nologin champion

WORKDIR /build
COPY constraints.txt ./
# torch and torchvision first, alone from TORCH_INDEX, at the pinned versions (a +cpu or +cu128 build
# of the same release). Their own dependencies, and everything else, come from PyPI in the project's
# install below, which finds torch and torchvision already satisfied and keeps them.
RUN pip install --no-deps --index-url "$TORCH_INDEX" -c constraints.txt torch torchvision
COPY pyproject.toml README.md ./
COPY src ./src
# With the grpc extra: the image serves KServe's gRPC protocol too (`champion serve --grpc-port 8001`).
RUN pip install -c constraints.txt ".[grpc]" \
    && champion --help >/dev/null \
    && rm -rf /build
COPY configs /opt/champion-configs

USER 10001:10001
WORKDIR /home/champion
ENTRYPOINT ["champion"]
CMD ["--help"]
