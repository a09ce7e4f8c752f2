"""Create the resumable_uploads table (tus uploads in progress).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from filesvc.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resumable_uploads",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("storage_key", sa.String(255), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("visibility", sa.String(8), nullable=False),
        sa.Column("expected_sha256", sa.String(64), nullable=True),
        sa.Column("upload_metadata", sa.Text(), nullable=False),
        sa.Column("content_type", sa.String(127), nullable=True),
        sa.Column("head", sa.LargeBinary(), nullable=False),
        sa.Column("hash_state", sa.LargeBinary(), nullable=False),
        sa.Column("backend_state", sa.Text(), nullable=False),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_resumable_uploads"),
        sa.UniqueConstraint("storage_key", name="uq_resumable_uploads_storage_key"),
    )
    op.create_index("ix_resumable_uploads_expires_at", "resumable_uploads", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_resumable_uploads_expires_at", table_name="resumable_uploads")
    op.drop_table("resumable_uploads")
