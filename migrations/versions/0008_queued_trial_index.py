"""trials: a partial index on id of the queued trials, for the lease's "oldest queued trial"; by
the primary key alone it walked past every finished trial of the study first

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_trials_queued', 'trials', ['id'], unique=False,
                    postgresql_where=sa.text("state = 'queued'"), sqlite_where=sa.text("state = 'queued'"))


def downgrade() -> None:
    op.drop_index('ix_trials_queued', table_name='trials')
