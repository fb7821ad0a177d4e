"""A catalog can keep an image model beside its text model: ``models.serves_images`` marks the model
that image queries and "more like this" use (at most one); none marked, the active model serves
them, as before. Workers embed each image with both (``imgsearch model activate NAME --for image``).

Revision ID: 0034
Revises: 0033
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0034"
down_revision: str | None = "0033"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE imgsearch.models ADD COLUMN serves_images boolean NOT NULL DEFAULT false")
    op.execute(
        "CREATE UNIQUE INDEX models_one_image_model_idx ON imgsearch.models (serves_images) WHERE serves_images"
    )


def downgrade() -> None:
    op.execute("DROP INDEX imgsearch.models_one_image_model_idx")
    op.execute("ALTER TABLE imgsearch.models DROP COLUMN serves_images")
