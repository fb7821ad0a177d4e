"""imgsearch for Django: add ``"imgsearch.contrib.django"`` to ``INSTALLED_APPS``.

``manage.py migrate`` then creates imgsearch's schema (its own Alembic migrations, run on the
Django database), and :mod:`imgsearch.contrib.django.models` maps its tables as unmanaged models::

    from imgsearch.contrib.django.models import Image

    hits = Image.objects.filter(product__attributes__color="red").search(text="summer dress", tenant="acme", k=20)
    for image in hits:
        image.distance, image.score, image.product.price

Settings come from ``settings.IMGSEARCH`` (a dict of imgsearch settings, e.g. ``{"MODEL": ...}``),
falling back to the ``IMGSEARCH_*`` environment.
"""
