"""Storage: the embedded server, engines, typed models and migrations."""
