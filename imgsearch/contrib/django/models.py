"""imgsearch's tables as unmanaged Django models (imgsearch's Alembic migrations own the schema).

``Image.objects`` adds :meth:`ImageQuerySet.search`: the hybrid search of
:meth:`imgsearch.Catalog.search`, restricted further by the QuerySet's own filters.
"""

from __future__ import annotations

import copy
from typing import Any

from django.db import models
from pgvector import HalfVector
from pgvector.django import HalfVectorField

from imgsearch.contrib.django import bridge
from imgsearch.ingest.vectors import as_vector


class UnitHalfVectorField(HalfVectorField):
    """pgvector's ``HalfVectorField`` that writes unit vectors, as every other path does: a vector
    of huge finite values can't overflow to zeros, and an empty, zero or non-finite one raises
    :class:`imgsearch.InvalidInput` naming it."""

    def get_prep_value(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, HalfVector):
            value = value.to_list()
        return super().get_prep_value(as_vector(value, None, "embedding"))


class EmbeddingModel(models.Model):
    """An embedding model registered in the catalog (table ``imgsearch.models``)."""

    id = models.SmallIntegerField(primary_key=True)
    name = models.TextField(unique=True)
    dim = models.IntegerField()
    active = models.BooleanField(default=False)
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = 'imgsearch"."models'

    def __str__(self) -> str:
        return f"{self.name} ({self.dim}-d{', active' if self.active else ''})"


class Product(models.Model):
    id = models.BigAutoField(primary_key=True)
    tenant = models.TextField()
    product_id = models.TextField()
    category = models.TextField(null=True)
    price = models.DecimalField(max_digits=14, decimal_places=4, null=True)
    currency = models.CharField(max_length=3, null=True)
    attributes = models.JSONField(default=dict)
    title = models.TextField(null=True)
    description = models.TextField(null=True)
    brand = models.TextField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = 'imgsearch"."products'

    def __str__(self) -> str:
        return f"{self.tenant}/{self.product_id}"


class ImageQuerySet(models.QuerySet["Image"]):
    def search(
        self,
        *,
        text: str | None = None,
        image: Any = None,
        similar_to: int | None = None,
        vector: Any = None,
        tenant: str | None = None,
        k: int = 10,
        **options: Any,
    ) -> list[Image]:
        """The ``k`` nearest images that match this QuerySet's filters and the given ones, nearest
        first, each with ``distance``, ``score``, ``probability``, ``matched_by`` and
        ``relevance`` attributes and its product loaded (a photo several products share comes once
        per product, each with its own).

        Takes the arguments of :meth:`imgsearch.Catalog.search` (``category``, ``price_min``,
        ``price_max``, ``attributes``, ``offset``, ``group_by_product``, ``diversity``, ``expand``,
        ``min_score``, ``min_probability``, ``brand``, ``mode``, ``parse``) with the same guarantees: ``min(k, matching)`` hits,
        pgvector settings with ``SET LOCAL`` inside the query's transaction (a savepoint, rolled
        back afterwards, so nothing leaks into the caller's transaction), and with ``tenant`` the
        database's row-level security restricting every row read to that tenant.
        """
        if self.query.is_sliced:
            raise TypeError("search() takes k and offset; don't slice the QuerySet first")
        where = options.pop("where", None)
        if self.query.has_filters():
            restricted = bridge.subquery_ids(self)
            where = restricted if where is None else (where & restricted)
        with bridge.catalog(self.db, rollback=True) as catalog:
            hits = catalog.search(
                text=text,
                image=image,
                similar_to=similar_to,
                vector=vector,
                tenant=tenant,
                where=where,
                k=k,
                **options,
            )
            by_id = (
                self.model.objects.using(self.db)
                .select_related("product")
                .defer("content")
                .in_bulk([hit.image_id for hit in hits])
            )
        # a photo shared by several products is a hit of each: the hit's own product, loaded
        others = {
            (hit.tenant, hit.product_id)
            for hit in hits
            if by_id[hit.image_id].product.product_id != hit.product_id
        }
        products = {}
        if others:
            match = models.Q()
            for shop, product_id in others:
                match |= models.Q(tenant=shop, product_id=product_id)
            products = {(p.tenant, p.product_id): p for p in Product.objects.using(self.db).filter(match)}
        found = []
        for hit in hits:
            row = copy.copy(by_id[hit.image_id])  # its own attributes and product cache
            if (hit.tenant, hit.product_id) in products:
                row.product = products[(hit.tenant, hit.product_id)]
            row.distance, row.score, row.probability = hit.distance, hit.score, hit.probability
            row.matched_by, row.relevance = hit.matched_by, hit.relevance
            found.append(row)
        return found


class Image(models.Model):
    id = models.BigAutoField(primary_key=True)
    product = models.ForeignKey(Product, models.DO_NOTHING, db_column="product_pk", related_name="images")
    tenant = models.TextField()
    sha256 = models.BinaryField(null=True)
    width = models.IntegerField(null=True)
    height = models.IntegerField(null=True)
    format = models.TextField(null=True)
    byte_size = models.BigIntegerField(null=True)
    content = models.BinaryField(null=True)
    uri = models.TextField(null=True)
    state = models.TextField(default="pending")
    error = models.TextField(null=True)
    attempts = models.IntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    objects = ImageQuerySet.as_manager()

    distance: float
    score: float
    probability: float | None

    class Meta:
        managed = False
        db_table = 'imgsearch"."images'

    def __str__(self) -> str:
        return f"image {self.pk} ({self.state})"


class ImageProduct(models.Model):
    """An image belongs to every product that uploads it (a photo shared by variants): stored and
    embedded once, linked to each product (composite key: image, product)."""

    pk = models.CompositePrimaryKey("image_id", "product_id")
    image = models.ForeignKey(Image, models.DO_NOTHING, related_name="links")
    product = models.ForeignKey(
        Product, models.DO_NOTHING, db_column="product_pk", related_name="image_links"
    )
    tenant = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = 'imgsearch"."image_products'


class WholeImages(models.Manager["Embedding"]):
    """Whole images' rows: one per (model, image, product), the key's rows (regions: ``all_rows``)."""

    def get_queryset(self) -> models.QuerySet[Embedding]:
        return super().get_queryset().filter(region=0)


class Embedding(models.Model):
    """An image's embedding under one model, a row per product the image belongs to (composite
    key: model, image, product). ``objects`` reads whole images; ``all_rows`` their regions' rows
    too (``region`` 1, 2, ...; imgsearch's migration 0040)."""

    pk = models.CompositePrimaryKey("model_id", "image_id", "product_id")
    model = models.ForeignKey(EmbeddingModel, models.DO_NOTHING)
    image = models.ForeignKey(Image, models.DO_NOTHING, related_name="embeddings")
    product = models.ForeignKey(Product, models.DO_NOTHING, db_column="product_pk", related_name="+")
    tenant = models.TextField()
    region = models.SmallIntegerField(default=0)
    embedding = UnitHalfVectorField()
    created_at = models.DateTimeField()

    objects = WholeImages()
    all_rows = models.Manager()

    class Meta:
        managed = False
        db_table = 'imgsearch"."embeddings'
