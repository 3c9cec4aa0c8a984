"""token counts as 64-bit integers (results, loss-curve points)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('results') as batch_op:
        batch_op.alter_column('tokens', existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=True)
    with op.batch_alter_table('loss_curve_points') as batch_op:
        batch_op.alter_column('tokens', existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('loss_curve_points') as batch_op:
        batch_op.alter_column('tokens', existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=True)
    with op.batch_alter_table('results') as batch_op:
        batch_op.alter_column('tokens', existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=True)
