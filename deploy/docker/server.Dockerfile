# mixopt server: the API, the study engine and the dashboard. CPU only: the strategies' models
# (LightGBM, BoTorch GPs) are small, so the image carries the CPU build of torch.
#   docker build -f deploy/docker/server.Dockerfile -t mixopt-server .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MIXOPT_DATA_DIR=/var/lib/mixopt

# libgomp1: LightGBM's OpenMP runtime, absent from the slim image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the CPU index: resolved through botorch it would pull a CUDA build (GBs).
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/mixopt
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY proxy_models ./proxy_models
COPY migrations ./migrations
RUN echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt \
    && pip install --constraint /tmp/torch-constraint.txt . \
    && python -c "import torch, service.api; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

RUN useradd --system --create-home --home-dir /home/mixopt mixopt \
    && mkdir -p /var/lib/mixopt && chown mixopt /var/lib/mixopt
USER mixopt
EXPOSE 8000
CMD ["mixopt", "server", "--host", "0.0.0.0", "--port", "8000"]
