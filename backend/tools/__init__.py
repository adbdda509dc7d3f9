"""Product tools on a project's labels: COCO export and import with provenance, the labelers'
split (assign), dashboard statistics."""
