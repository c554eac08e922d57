# The app image: one image, started as migrate, webhook, worker, beat or flower by compose.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md payments_cli.py ./
COPY shared ./shared
COPY webhook ./webhook
COPY worker ./worker
COPY scheduler ./scheduler
COPY migrations ./migrations
RUN pip install . flower==2.0.1 && useradd --system --uid 10001 payments
USER payments
EXPOSE 8000
ENTRYPOINT ["payments"]
