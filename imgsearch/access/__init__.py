"""Access: who may see which rows. Tenancy is PostgreSQL row-level security applied to each
transaction that names a tenant; API keys bind HTTP callers to one tenant or to all."""
