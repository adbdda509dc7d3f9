"""Demo support: generated scenes and the local stack (Redis, Label Studio, backend) that
scripts/up.sh runs."""
