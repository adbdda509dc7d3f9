"""Label Studio's side: the REST client, connecting a project, the label config, and its region
format (percent boxes)."""
