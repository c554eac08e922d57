# The app image: one image, started as migrate, webhook, worker, beat or flower by compose.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md payments_cli.py localstripe_server.py ./
COPY shared ./shared
COPY webhook ./webhook
COPY worker ./worker
COPY scheduler ./scheduler
COPY migrations ./migrations
# localstripe only serves the compose file's `dev` profile.
RUN pip install . flower==2.0.1 localstripe==1.15.10 && useradd --system --uid 10001 payments
USER payments
EXPOSE 8000
ENTRYPOINT ["payments"]
