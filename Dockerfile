# Slipway's image: `slipway serve` (webhooks, API, pages, controller) and, with
# SLIPWAY_RUNTIME=kubernetes, the task workers' runtime (SLIPWAY_KUBERNETES_WORKER_IMAGE).
#   docker build -t slipway:0.1.0 .
# Two stages: the wheel is built with the build tools, the runtime stage gets only the
# installed package, git (GitPython and builds of the deployed repositories need it) and
# a non-root user whose uid the Helm chart's securityContext uses (10001).
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY webhooks ./webhooks
RUN python -m pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SLIPWAY_HOST=0.0.0.0 \
    SLIPWAY_PORT=8080 \
    SLIPWAY_DATA_DIR=/data
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python -m pip install --no-compile /wheels/*.whl && rm -rf /wheels
RUN groupadd --system --gid 10001 slipway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin slipway \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 0700 /data
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["slipway"]
CMD ["serve"]
