# syntax=docker/dockerfile:1
# Flywheel's images. Two targets, one install script (./dev install, what CI runs):
#
#   docker build --target gateway -t flywheel:0.1.0 .          # the gateway: no torch
#   docker build --target retrain -t flywheel-retrain:0.1.0 .  # retrain: the `train` extra
#
# Both run as the unprivileged user 10001 from a virtualenv copied out of a build stage,
# so neither pip, its cache nor the sources' build files reach the final image. Pin the
# base by digest in your registry's mirror (--build-arg PYTHON_IMAGE=python:...@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY pyproject.toml README.md dev ./
COPY gateway ./gateway
COPY retrain ./retrain
COPY flywheel_stack ./flywheel_stack

# -- build stages: ./dev install, into /opt/flywheel, a copy rather than an editable link
FROM source AS build-gateway
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN FLYWHEEL_VENV=/opt/flywheel FLYWHEEL_EXTRAS="" FLYWHEEL_EDITABLE=0 ./dev install \
    && /opt/flywheel/bin/python -m pip uninstall -q -y pip \
    && /opt/flywheel/bin/gateway --help > /dev/null

FROM source AS build-retrain
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN FLYWHEEL_VENV=/opt/flywheel FLYWHEEL_EXTRAS=train FLYWHEEL_EDITABLE=0 ./dev install \
    && /opt/flywheel/bin/python -m pip uninstall -q -y pip \
    && /opt/flywheel/bin/retrain --help > /dev/null

# -- what both images share: the base, the user, the environment
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 flywheel \
    && useradd --system --uid 10001 --gid flywheel --home-dir /var/lib/flywheel \
       --no-create-home --shell /usr/sbin/nologin flywheel \
    && install -d -o flywheel -g flywheel -m 0750 /var/lib/flywheel
ENV PATH=/opt/flywheel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/flywheel
WORKDIR /var/lib/flywheel

FROM runtime AS retrain
LABEL org.opencontainers.image.title="flywheel-retrain" \
      org.opencontainers.image.description="Flywheel's retrain job: datasets from ratings, LoRA fine-tuning, evaluation, canary" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-retrain /opt/flywheel /opt/flywheel
USER 10001:10001
# A batch job (the chart's CronJob runs `retrain run --experiment NAME`): nothing to probe.
HEALTHCHECK NONE
CMD ["retrain", "--help"]

# The default target (last): the gateway.
FROM runtime AS gateway
LABEL org.opencontainers.image.title="flywheel" \
      org.opencontainers.image.description="Flywheel: an OpenAI-compatible chat gateway with A/B experiments, ratings and retraining" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-gateway /opt/flywheel /opt/flywheel
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
