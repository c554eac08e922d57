"""The Celery beat edge: the schedule of periodic jobs (sweeps, redrives, reconciliation)."""
