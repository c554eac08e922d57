# Two images from one file:
#   docker build .                       the production image (the last stage, `production`):
#                                        started as migrate, webhook, worker, beat or flower
#   docker build --target localstripe .  the Stripe stand-in, for compose's `dev` profile only
# localstripe (a fake Stripe that accepts any key) is never installed in the production image.
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN useradd --system --uid 10001 payments

FROM base AS localstripe
COPY localstripe_server.py ./
RUN pip install localstripe==1.15.10
USER payments
EXPOSE 8420
ENTRYPOINT ["python", "-m", "localstripe_server"]
CMD ["8420", "0.0.0.0"]

FROM base AS production
COPY pyproject.toml README.md payments_cli.py ./
COPY shared ./shared
COPY webhook ./webhook
COPY worker ./worker
COPY scheduler ./scheduler
COPY migrations ./migrations
# Flower and prometheus-client are dependencies of the package (pinned in pyproject.toml).
RUN pip install .
USER payments
# 8000: the API and the Stripe webhook; 9100: the webhook's /metrics, 9101: a worker's, for the
# internal network only.
EXPOSE 8000 9100 9101
ENTRYPOINT ["payments"]
