"""Settings of the Django test project: the database is IMGSEARCH_DATABASE_URL (a SQLAlchemy URL;
the embedded server's socket in the pytest run); Django's runner creates test_<name> on it."""

import os

from sqlalchemy import make_url

url = make_url(os.environ["IMGSEARCH_DATABASE_URL"])

SECRET_KEY = "imgsearch-django-test-project"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "imgsearch.contrib.django", "searchtests"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.database,
        "USER": url.username or "postgres",
        "PASSWORD": url.password or "",
        "HOST": url.query.get("host") or url.host or "",
        "PORT": str(url.port or ""),
    }
}
IMGSEARCH = {"MODEL": os.environ["IMGSEARCH_MODEL"]}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
