"""leases.ask_key: the idempotency key of the ask that granted the lease

Revision ID: 0006
Revises: 0005w
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005w'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('leases') as batch_op:
        batch_op.add_column(sa.Column('ask_key', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_leases_ask_key', ['ask_key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('leases') as batch_op:
        batch_op.drop_index('ix_leases_ask_key')
        batch_op.drop_column('ask_key')
