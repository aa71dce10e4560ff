"""The database adapter: the service's own tables, the platform's ``validation_results``, migrations."""
