"""The domain of cobalt-payments: money, the ledger and its rules. Imports no edge (Flask, Celery)."""
