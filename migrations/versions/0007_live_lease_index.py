"""leases: a partial index on worker_id of the live leases (outcome IS NULL), for the per-worker
lease count that every lease call makes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_leases_live_worker', 'leases', ['worker_id'], unique=False,
                    postgresql_where=sa.text('outcome IS NULL'), sqlite_where=sa.text('outcome IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_leases_live_worker', table_name='leases')
