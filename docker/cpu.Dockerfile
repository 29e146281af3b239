# A CPU worker: runs every SLIM flow (the demo's in-process teacher and student included) for the
# work pool `slim-cpu`. Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t slim-cpu .
FROM python:3.11.9-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    SLIM_HOME=/opt/slim

WORKDIR /opt/slim
# The CPU build of PyTorch first: a bare `torch` requirement would pull the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
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

# Models fetched at run time land here; mount a volume to keep them between containers.
ENV SLIM_MODEL_CACHE=/models
# Flows run as an unprivileged user that owns only the model cache and the run folders.
RUN useradd --create-home --uid 10001 slim \
    && mkdir -p /models /opt/slim/runs /opt/slim/results \
    && chown slim /models /opt/slim/runs /opt/slim/results
USER 10001
VOLUME ["/models", "/opt/slim/runs", "/opt/slim/results"]

CMD ["prefect", "worker", "start", "--pool", "slim-cpu", "--type", "process", "--with-healthcheck"]
