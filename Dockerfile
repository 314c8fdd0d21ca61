# One image for every Python service of the pipeline: `docker run <image> engine run`, `... sink timescale`.
# Built by docker-compose.yml (profile `pipeline`); checked statically by tests/unit/test_compose.py.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 xchg \
 && useradd --system --uid 10001 --gid xchg --home-dir /app --no-create-home --shell /usr/sbin/nologin xchg \
 && install -d -o xchg -g xchg /var/lib/xchg

WORKDIR /app

# Dependencies first, read from pyproject.toml, so that a code change does not reinstall them.
# Every dependency ships a manylinux wheel for CPython 3.11, so no compiler is needed.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The package itself: installs the `xchg` console script (and checks the dependencies resolve).
COPY streams ./streams
COPY connectors ./connectors
COPY schemas ./schemas
COPY infra/kafka/topics.yaml ./infra/kafka/topics.yaml
COPY infra/markets.yaml ./infra/markets.yaml
RUN pip install . \
 && rm -rf build ./*.egg-info \
 && python -m compileall -q streams connectors

# The wheel carries only .py files: the Avro schemas (schemas/), the SQL migrations
# (connectors/timescale/migrations/) and the topic and market files are found relative to the
# source tree. PYTHONPATH puts /app ahead of site-packages so those paths resolve to the copies above.
ENV PYTHONPATH=/app \
    EXCHANGE_RUNTIME_DIR=/var/lib/xchg \
    EXCHANGE_METRICS_PORT=9400

USER xchg:xchg

# Prometheus endpoint of every long-running service (path /metrics), see infra/prometheus/METRICS.md.
EXPOSE 9400

ENTRYPOINT ["xchg"]
CMD ["--help"]
