"""The HTTP face Label Studio talks to: the app factory (app.py) and one blueprint per
resource: protocol.py (/health, /setup, /predict, /versions), webhook.py, status.py (/status,
/dashboard), monitoring.py (/metrics)."""
