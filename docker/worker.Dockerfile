# The engine's image: `wfe worker` by default; the compose stack also runs `wfe db upgrade`
# with it. Build from the repository root (compose does: context .., this file):
#   docker build -f docker/worker.Dockerfile -t workflow-engine-temporal-worker .
ARG PYTHON_VERSION=3.11.11-slim
FROM python:${PYTHON_VERSION}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Your workflow modules: mount them here, or COPY them in an image built FROM this one.
    PYTHONPATH=/workflows

WORKDIR /src
# The same package the README installs (`pip install .`), from the same sources.
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY activities ./activities
COPY temporal_workflows ./temporal_workflows
COPY wfe_demo ./wfe_demo
RUN pip install . \
    && rm -rf /src/build /src/*.egg-info \
    && useradd --create-home --uid 10001 wfe \
    && mkdir -p /workflows

USER wfe
WORKDIR /home/wfe
# Exec form: `wfe` is PID 1 and gets SIGTERM, so `docker stop` shuts the worker down cleanly
# (it stops polling and lets its running activities finish).
ENTRYPOINT ["wfe"]
CMD ["worker"]
