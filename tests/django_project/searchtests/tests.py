"""imgsearch.contrib.django under Django's test runner: hybrid search through the QuerySet, with
the guarantees of Catalog.search, inside Django's own transactions (each test's data is never
committed, so only the Django connection can see it)."""

from __future__ import annotations

import numpy as np
from django.db import connection, transaction
from django.test import TestCase

from imgsearch.contrib.django import bridge
from imgsearch.contrib.django.models import Embedding, EmbeddingModel, Image, Product
from imgsearch.errors import DimensionMismatch, InvalidInput, InvalidQuery

ROWS = 1200
CATEGORIES = ["shoes", "bags", "hats", "lamps", "mugs", "chairs"]
COLOURS = ["red", "blue", "green"]


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    data = centres[rng.integers(0, 8, n)] + rng.standard_normal((n, dim)) * 0.6
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)


class SearchTests(TestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        with bridge.catalog() as catalog:
            cls.dim = catalog.dim
            cls.vectors = unit_rows(ROWS, cls.dim, seed=3)
            rng = np.random.default_rng(4)
            cls.meta = [
                {
                    "tenant": "acme" if i % 3 else "globex",
                    "category": CATEGORIES[int(rng.integers(0, len(CATEGORIES)))],
                    "price": round(float(rng.uniform(1, 200)), 2),
                    "color": COLOURS[int(rng.integers(0, len(COLOURS)))],
                }
                for i in range(ROWS)
            ]
            cls.ids = catalog.add_many(
                {
                    "embedding": vector,
                    "tenant": m["tenant"],
                    "product_id": f"sku-{i}",
                    "category": m["category"],
                    "price": m["price"],
                    "attributes": {"color": m["color"]},
                }
                for i, (vector, m) in enumerate(zip(cls.vectors, cls.meta, strict=True))
            )
        cls.query = unit_rows(1, cls.dim, seed=99)[0]

    def exact(self, keep: list[bool], k: int) -> list[int]:
        distances = 1 - self.vectors @ self.query
        order = [i for i in np.argsort(distances, kind="stable") if keep[i]]
        return [self.ids[i] for i in order[:k]]

    def test_models_map_the_tables(self) -> None:
        self.assertEqual(Image.objects.count(), ROWS)
        self.assertEqual(
            Product.objects.filter(attributes__color="red").count(),
            sum(m["color"] == "red" for m in self.meta),
        )
        active = EmbeddingModel.objects.get(active=True)
        self.assertEqual(active.dim, self.dim)
        stored = Embedding.objects.get(image_id=self.ids[0], model=active)
        self.assertEqual(np.asarray(stored.embedding, dtype=np.float32).shape, (self.dim,))

    def test_embeddings_read_whole_images_and_all_rows_reads_their_regions(self) -> None:
        stored = Embedding.objects.get(image_id=self.ids[1], model__active=True)
        with connection.cursor() as cursor:  # a region row of that image, as a worker writes one
            cursor.execute(
                "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, region, box, embedding) "
                "SELECT model_id, image_id, product_pk, tenant, 1, ARRAY[0, 0, 8, 8], embedding "
                "FROM imgsearch.embeddings WHERE image_id = %s AND region = 0",
                [self.ids[1]],
            )
        self.assertEqual(Embedding.objects.get(image_id=self.ids[1], model__active=True).pk, stored.pk)
        self.assertEqual(Embedding.objects.filter(image_id=self.ids[1]).count(), 1)
        self.assertEqual(sorted(Embedding.all_rows.filter(image_id=self.ids[1]).values_list("region", flat=True)), [0, 1])
        self.assertEqual(Image.objects.get(pk=self.ids[1]).embeddings.count(), 1)

    def test_filtered_search_returns_k_rows_with_high_recall(self) -> None:
        for tenant, category, price_max in [
            ("acme", None, None),
            ("acme", "hats", 40),
            ("globex", "mugs", 15),
        ]:
            keep = [
                m["tenant"] == tenant
                and (category is None or m["category"] == category)
                and (price_max is None or m["price"] <= price_max)
                for m in self.meta
            ]
            hits = Image.objects.search(
                vector=self.query, tenant=tenant, category=category, price_max=price_max, k=10
            )
            expected = self.exact(keep, 10)
            self.assertEqual(len(hits), min(10, sum(keep)))
            self.assertGreaterEqual(len({h.id for h in hits} & set(expected)) / len(expected), 0.98)
            self.assertEqual([h.distance for h in hits], sorted(h.distance for h in hits))
            for hit in hits:
                self.assertEqual(hit.tenant, tenant)
                self.assertAlmostEqual(hit.score, 1 - hit.distance, places=6)
                self.assertTrue(category is None or hit.product.category == category)

    def test_queryset_filters_compose_with_the_search(self) -> None:
        red_cheap = Image.objects.filter(product__attributes__color="red", product__price__lt=30)
        hits = red_cheap.search(vector=self.query, k=10)
        keep = [m["color"] == "red" and m["price"] < 30 for m in self.meta]
        self.assertEqual([h.id for h in hits], self.exact(keep, 10))
        self.assertTrue(all(h.product.attributes["color"] == "red" and h.product.price < 30 for h in hits))
        one = Image.objects.filter(pk=self.ids[7]).search(vector=self.query, k=5)
        self.assertEqual([h.id for h in one], [self.ids[7]])

    def test_tenant_restriction_is_enforced_by_the_database(self) -> None:
        globex_only = Image.objects.filter(tenant="globex")
        self.assertEqual(globex_only.search(vector=self.query, tenant="acme", k=10), [])
        everything = Image.objects.search(vector=self.query, tenant="acme", k=1000)
        self.assertEqual(len(everything), sum(m["tenant"] == "acme" for m in self.meta))  # min(k, matching)
        self.assertEqual({h.tenant for h in everything}, {"acme"})

    def test_settings_and_role_end_with_the_search(self) -> None:
        with connection.cursor() as cursor, transaction.atomic():
            cursor.execute("SELECT current_user, current_setting('hnsw.ef_search')")
            before = cursor.fetchone()
            Image.objects.search(vector=self.query, tenant="acme", k=50)
            cursor.execute(
                "SELECT current_user, current_setting('hnsw.ef_search'), "
                "coalesce(current_setting('imgsearch.tenant', true), '')"
            )
            after = cursor.fetchone()
        self.assertEqual(after, (*before, ""))

    def test_similar_text_and_grouping(self) -> None:
        source = self.ids[5]
        similar = Image.objects.search(similar_to=source, k=5)
        self.assertEqual(len(similar), 5)
        self.assertNotIn(source, [h.id for h in similar])
        by_text = Image.objects.search(text="a red shoe", tenant="acme", k=3)
        self.assertEqual(len(by_text), 3)
        self.assertTrue(all(h.probability is not None and 0 < h.probability < 1 for h in by_text))
        grouped = Image.objects.search(vector=self.query, k=10, group_by_product=True)
        self.assertEqual(len({h.product_id for h in grouped}), 10)

    def test_bad_queries_raise_typed_errors(self) -> None:
        with self.assertRaises(DimensionMismatch):
            Image.objects.search(vector=[0.1] * (self.dim + 1))
        with self.assertRaises(InvalidQuery):
            Image.objects.search(k=5)
        with self.assertRaises(TypeError):
            Image.objects.all()[:3].search(vector=self.query)
        evil = "x'); DROP TABLE imgsearch.images; --"
        self.assertEqual(Image.objects.filter(tenant=evil).search(vector=self.query, category=evil), [])
        self.assertEqual(Image.objects.count(), ROWS)

    def test_embeddings_written_through_the_orm_are_unit_vectors(self) -> None:
        """A vector of huge values saved through Django is stored at unit length and found, as the
        library stores it; one with no direction is refused by name, nothing written."""
        stored = Embedding.objects.get(image_id=self.ids[3], model__active=True)
        direction = self.vectors[3].astype(np.float64)
        stored.embedding = (direction / np.abs(direction).max() * 1e300).tolist()
        Embedding.objects.filter(pk=stored.pk).update(embedding=stored.embedding)
        again = np.asarray(Embedding.objects.get(pk=stored.pk).embedding, dtype=np.float64)
        self.assertAlmostEqual(float(np.linalg.norm(again)), 1.0, places=2)
        hits = Image.objects.search(vector=direction * 1e300, k=1)
        self.assertEqual([h.id for h in hits], [self.ids[3]])
        with self.assertRaisesMessage(InvalidInput, "embedding is all zeros"), transaction.atomic():
            Embedding.objects.filter(pk=stored.pk).update(embedding=[0.0] * self.dim)
        self.assertEqual(Image.objects.search(vector=direction, k=1)[0].id, self.ids[3])
