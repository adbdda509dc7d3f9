"""Blob-to-task importer: images in Azure Blob Storage become Label Studio tasks (issue 5)."""
