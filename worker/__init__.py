"""The Celery edge: the app built from settings, and thin named tasks that call `shared`."""
