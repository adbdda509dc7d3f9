"""MLAssist's ML backend: the HTTP face Label Studio talks to."""
