# The tracker image: one image for every role (migrate, api, consume); the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tracker ./tracker
COPY api ./api
COPY consumers ./consumers
RUN pip install '.[server]' && useradd --system --home-dir /app tracker

USER tracker
EXPOSE 8000
CMD ["tracker", "api"]
