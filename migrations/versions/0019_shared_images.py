"""A photo shared by several products: an image belongs to every product that uploads it.

Shops reuse one photo for a product's variants, and feeds repeat images. Before this, the same
bytes uploaded for a second product returned the first product's image, and the second product
had none: it never appeared in a search. Now:

* ``image_products`` links an image to each product that uploaded it (the bytes are stored and
  embedded once). ``images.product_pk`` stays: the product that uploaded it first, or, once that
  one is deleted, another of its products;
* ``embeddings`` holds one row per image *and product* (its key gains ``product_pk``): each row
  carries its own product's category and price (kept by migration 0004's triggers), so a filtered
  search stays one exact scan or one index walk of one table, and grouping by product, "similar
  to this product" and the SQL functions follow the link with no join. An embedding row needs its
  link (a foreign key), and goes with it;
* a new image is linked to its product by a trigger, whatever wrote it (the library, Django,
  psql), so the workers write its embedding rows;
* deleting a product keeps an image another product shares: a trigger hands the image to one of
  its other products first, so the cascade takes only the images no other product has.

Existing rows become links of their product. Downgrading keeps each image's first product only.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("imgsearch_app", "imgsearch_worker", "imgsearch_admin", "imgsearch_console")

KEEP_SHARED = """
CREATE FUNCTION imgsearch._keep_shared_images() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    -- images of the product being deleted that another product shares change hands first, so
    -- the images' cascade deletes only the ones no other product has
    UPDATE imgsearch.images i SET product_pk = other.product_pk, updated_at = now()
    FROM (
        SELECT DISTINCT ON (l.image_id) l.image_id, l.product_pk
        FROM imgsearch.image_products l JOIN imgsearch.images s ON s.id = l.image_id
        WHERE s.product_pk = OLD.id AND l.product_pk <> OLD.id
        ORDER BY l.image_id, l.created_at, l.product_pk
    ) AS other
    WHERE i.id = other.image_id;
    RETURN OLD;
END
$fn$
"""

# an image is its first product's, however it was written (the library, Django, psql)
LINK_NEW = """
CREATE FUNCTION imgsearch._link_new_images() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO imgsearch.image_products (image_id, product_pk, tenant)
    SELECT a.id, a.product_pk, a.tenant FROM added a
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fn$
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE imgsearch.image_products (
            image_id bigint NOT NULL,
            product_pk bigint NOT NULL,
            tenant text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT image_products_pkey PRIMARY KEY (image_id, product_pk),
            CONSTRAINT image_products_image_fkey FOREIGN KEY (image_id, tenant)
                REFERENCES imgsearch.images (id, tenant) ON DELETE CASCADE,
            CONSTRAINT image_products_product_fkey FOREIGN KEY (product_pk, tenant)
                REFERENCES imgsearch.products (id, tenant) ON DELETE CASCADE
        )
        """
    )
    op.execute("CREATE INDEX image_products_product_pk_idx ON imgsearch.image_products (product_pk)")
    op.execute(
        "INSERT INTO imgsearch.image_products (image_id, product_pk, tenant, created_at) "
        "SELECT id, product_pk, tenant, created_at FROM imgsearch.images"
    )
    # one row per image and product; a row needs its link, and goes with it
    op.execute("ALTER TABLE imgsearch.embeddings DROP CONSTRAINT embeddings_pkey")
    op.execute(
        "ALTER TABLE imgsearch.embeddings ADD CONSTRAINT embeddings_pkey PRIMARY KEY (model_id, image_id, product_pk)"
    )
    op.execute(
        "ALTER TABLE imgsearch.embeddings ADD CONSTRAINT embeddings_link_fkey FOREIGN KEY (image_id, product_pk) "
        "REFERENCES imgsearch.image_products (image_id, product_pk) ON DELETE CASCADE"
    )

    everyone = ", ".join(ROLES)
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON imgsearch.image_products TO {everyone}")
    op.execute("ALTER TABLE imgsearch.image_products ENABLE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_app ON imgsearch.image_products TO imgsearch_app "
        "USING (tenant = imgsearch.current_tenant()) WITH CHECK (tenant = imgsearch.current_tenant())"
    )
    op.execute(
        "CREATE POLICY tenant_console ON imgsearch.image_products TO imgsearch_console "
        "USING (tenant = imgsearch.login_tenant()) WITH CHECK (tenant = imgsearch.login_tenant())"
    )
    op.execute(
        "CREATE POLICY all_tenants ON imgsearch.image_products TO imgsearch_worker, imgsearch_admin "
        "USING (true) WITH CHECK (true)"
    )

    op.execute(LINK_NEW)
    op.execute(
        "CREATE TRIGGER images_link_new AFTER INSERT ON imgsearch.images REFERENCING NEW TABLE AS added "
        "FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._link_new_images()"
    )
    op.execute(KEEP_SHARED)
    op.execute(
        "CREATE TRIGGER products_keep_shared_images BEFORE DELETE ON imgsearch.products "
        "FOR EACH ROW EXECUTE FUNCTION imgsearch._keep_shared_images()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER images_link_new ON imgsearch.images")
    op.execute("DROP FUNCTION imgsearch._link_new_images()")
    op.execute("DROP TRIGGER products_keep_shared_images ON imgsearch.products")
    op.execute("DROP FUNCTION imgsearch._keep_shared_images()")
    op.execute("ALTER TABLE imgsearch.embeddings DROP CONSTRAINT embeddings_link_fkey")
    op.execute(
        "DELETE FROM imgsearch.embeddings e USING imgsearch.images i "
        "WHERE i.id = e.image_id AND e.product_pk <> i.product_pk"
    )
    op.execute("ALTER TABLE imgsearch.embeddings DROP CONSTRAINT embeddings_pkey")
    op.execute(
        "ALTER TABLE imgsearch.embeddings ADD CONSTRAINT embeddings_pkey PRIMARY KEY (model_id, image_id)"
    )
    op.execute("DROP TABLE imgsearch.image_products")
