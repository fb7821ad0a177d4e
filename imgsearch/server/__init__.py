"""The HTTP service (``imgsearch serve``, extra ``pg-imgsearch[server]``): a FastAPI app over the
catalog, with per-tenant API keys, problem-details errors, metrics and a search page.

Layout: :mod:`~imgsearch.server.app` builds the app, :mod:`~imgsearch.server.deps` turns a key
into a tenant, ``routes/`` has one module per resource, ``static/`` the page.
"""
