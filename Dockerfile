# The Python worker image: `bullwait worker` (default) or any other bullwait command.
#   docker build -t bullwait .
#   docker run --rm -e REDIS_URL=redis://redis:6379/1 bullwait
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bullwait ./bullwait
RUN pip install . && useradd --system --uid 10001 --no-create-home bullwait

USER bullwait
# Metrics and health (/metrics, /health/queues, /health/live) when METRICS_HOST=0.0.0.0.
EXPOSE 9090
# SIGTERM: stop fetching, let active jobs finish within BULLWAIT_SHUTDOWN_TIMEOUT.
STOPSIGNAL SIGTERM
ENTRYPOINT ["bullwait"]
CMD ["worker"]
