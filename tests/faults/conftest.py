"""The fault suite reuses the end-to-end stack: a real `payments worker` (`worker`), the real
gunicorn webhook server (`webhook_url`), the broker's Redis database (`broker`) and the events
module's callback consumer (`received`). Scenarios that kill or cut off a service start their own
copies (see each test file)."""

from tests.e2e.conftest import broker, callback_consumer, received, webhook_url, worker  # noqa: F401
