# A GPU worker for the student (fine-tuning and vLLM inference), work pool `slim-gpu`. The base
# image brings CUDA, PyTorch and vLLM matched to each other; SLIM installs on top without
# touching them. Build from the repository root:
#   docker build -f docker/gpu.Dockerfile -t slim-gpu .
FROM vllm/vllm-openai:v0.33.0

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    SLIM_HOME=/opt/slim \
    SLIM_MODEL_CACHE=/models

WORKDIR /opt/slim
COPY pyproject.toml README.md ./
COPY slim_core ./slim_core
COPY storage ./storage
COPY tasks ./tasks
COPY flows ./flows
COPY slim_cli ./slim_cli
COPY configs ./configs
COPY data ./data
COPY prefect.yaml ./
# The project itself (its dependency ranges are in pyproject.toml), with the Dask runner.
# hadolint ignore=DL3013
RUN pip install ".[dask]"

# Flows run as an unprivileged user that owns only the model cache and the run folders.
RUN useradd --create-home --uid 10001 slim \
    && mkdir -p /models /opt/slim/runs /opt/slim/results \
    && chown slim /models /opt/slim/runs /opt/slim/results
USER 10001
VOLUME ["/models", "/opt/slim/runs", "/opt/slim/results"]
# The base image's entrypoint starts vLLM's server; this image is a Prefect worker instead
# (its health endpoint on :8080 for the compose healthcheck).
ENTRYPOINT []
CMD ["prefect", "worker", "start", "--pool", "slim-gpu", "--type", "process", "--with-healthcheck"]
