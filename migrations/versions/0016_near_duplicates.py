"""Near-duplicate images: a perceptual hash per image, and a link from a near-copy to its original.

``phash`` is the image's 64-bit pHash (:func:`imgsearch.ingest.images.perceptual_hash`) as a ``bit(64)``,
set at upload from the bytes, or by the worker for an image that arrives by URL. Its HNSW index
(pgvector's ``bit_hamming_ops``) finds the images a few bits away from an upload's hash, which is
what ``on_duplicate="link"|"reject"`` checks. ``duplicate_of``: the image of another product of
the same tenant that an upload with ``on_duplicate="link"`` copies. The foreign key keeps the link
inside the tenant, and deleting the original clears the link.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE imgsearch.images ADD COLUMN phash bit(64), ADD COLUMN duplicate_of bigint")
    op.execute(
        "ALTER TABLE imgsearch.images ADD CONSTRAINT images_duplicate_of_fkey "
        "FOREIGN KEY (duplicate_of, tenant) REFERENCES imgsearch.images (id, tenant) "
        "ON DELETE SET NULL (duplicate_of)"
    )
    op.execute(
        "CREATE INDEX images_phash_idx ON imgsearch.images USING hnsw (phash bit_hamming_ops) "
        "WHERE phash IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX images_duplicate_of_idx ON imgsearch.images (duplicate_of) WHERE duplicate_of IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX imgsearch.images_duplicate_of_idx")
    op.execute("DROP INDEX imgsearch.images_phash_idx")
    op.execute("ALTER TABLE imgsearch.images DROP CONSTRAINT images_duplicate_of_fkey")
    op.execute("ALTER TABLE imgsearch.images DROP COLUMN duplicate_of, DROP COLUMN phash")
