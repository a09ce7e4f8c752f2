# syntax=docker/dockerfile:1
# filesvc: build a wheel's worth of virtualenv, then copy it into a slim runtime.
#   docker build -t filesvc .
#   docker run -p 8000:8000 -v filesvc-data:/data filesvc

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY filesvc ./filesvc
COPY static ./static
RUN python -m venv /opt/filesvc \
    && /opt/filesvc/bin/pip install --no-cache-dir .

FROM python:3.12-slim
# libmagic detects each upload's type from its bytes (python-magic loads it at start-up).
# Installed through `file`, whose name is the same on Debian 12 and 13 (the library is
# libmagic1 on one, libmagic1t64 on the other). Not pinned: security updates replace it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends file \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/filesvc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FILESVC_DATA_DIR=/data
RUN groupadd --system --gid 10001 filesvc \
    && useradd --system --uid 10001 --gid filesvc --home-dir /data --shell /usr/sbin/nologin filesvc \
    && mkdir -p /data \
    && chown filesvc:filesvc /data
COPY --from=build /opt/filesvc /opt/filesvc
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# No curl in slim images: the interpreter that runs the service probes it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["filesvc"]
CMD ["serve", "--host", "0.0.0.0"]
