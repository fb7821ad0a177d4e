"""A thumbnail beside each image, for catalogs that drop the original bytes after embedding.

With ``IMGSEARCH_KEEP_CONTENT=false`` a worker that has embedded an uploaded image replaces its
bytes (``content``, typically 100-300 KB of a product photo) with a JPEG thumbnail of at most
256 px (``thumbnail``, 5-15 KB): the table, its vacuums and its backups shrink by the photos'
size, and the catalog still shows every result. The price: such an image can't be embedded again
by another model until its source is uploaded again (``imgsearch reembed`` names them).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE imgsearch.images ADD COLUMN thumbnail bytea")


def downgrade() -> None:
    op.execute("ALTER TABLE imgsearch.images DROP COLUMN thumbnail")
