# The one image of the cluster mode: sweep worker pods (`python -m mlops.tuning.worker`), the model
# service (`mlops serve`) and the MLflow server (`mlflow server`).
#
#   CPU (default):  docker build -t mlops:dev .
#   CUDA:           docker build -t mlops:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# The CUDA base brings the CUDA/cuDNN runtime the GPU nodes' driver pairs with; the torch wheel
# comes from the matching index. Python 3.11 comes from the base when it has it (python:3.11-slim),
# otherwise uv installs a standalone build, so any base works.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY --from=uv /uv /usr/local/bin/uv

# torch first and pinned, from the CPU or CUDA index: the project install below then finds it
# satisfied and pulls nothing torch-related from PyPI.
RUN uv venv --python 3.11 "$VIRTUAL_ENV" \
 && uv pip install --no-cache "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
# Dependencies before the code, so a code change does not reinstall them.
# The locked versions (scripts/lock.py) the suite passed with; torch above already satisfies its pin.
COPY pyproject.toml requirements.lock ./
RUN uv pip install --no-cache -r requirements.lock
COPY mlops ./mlops
RUN uv pip install --no-cache --no-deps --reinstall-package mlops . && rm -rf build
# What the stages read from the project root (a sweep pod gets its own params/experiment from a
# ConfigMap under /app/sweep; data and checkpoints are volumes under /app/data and /app/.mlops).
COPY params.yaml dvc.yaml ./
COPY experiments ./experiments

RUN useradd --create-home --uid 10001 mlops && mkdir -p /app/.mlops && chown -R mlops /app
USER 10001
EXPOSE 8000 5000
CMD ["mlops", "serve", "--host", "0.0.0.0", "--port", "8000"]
