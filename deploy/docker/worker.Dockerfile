# mixopt worker: leases trials and trains proxies on a GPU. Built on the PyTorch CUDA image,
# whose torch is kept (pinned by a constraint, so pip can only reuse it, never re-pull it).
#   docker build -f deploy/docker/worker.Dockerfile -t mixopt-worker .
#   docker build -f deploy/docker/worker.Dockerfile --build-arg TORCH_IMAGE=pytorch/pytorch:<tag> .
ARG TORCH_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${TORCH_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MIXOPT_DATA_DIR=/var/lib/mixopt

WORKDIR /opt/mixopt
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY proxy_models ./proxy_models
COPY migrations ./migrations
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-constraint.txt \
    && pip install --constraint /tmp/torch-constraint.txt . \
    && python -c "import torch, proxy_models, workers.daemon; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

COPY deploy/docker/worker-entrypoint.sh /usr/local/bin/mixopt-worker-slot
RUN chmod 0755 /usr/local/bin/mixopt-worker-slot && mkdir -p /var/lib/mixopt/workers /var/lib/mixopt/cache /data/corpus
ENTRYPOINT ["mixopt-worker-slot"]
CMD ["mixopt", "worker", "--url", "http://server:8000", "--corpus", "/data/corpus", "--cache-dir", "/var/lib/mixopt/cache"]
