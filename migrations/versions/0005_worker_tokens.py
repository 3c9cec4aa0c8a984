"""worker tokens: issue time (expiry), join-secret fingerprint (rotation), revocation time

Revision ID: 0005w
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005w'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('workers') as batch_op:
        batch_op.add_column(sa.Column('revoked_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('token_issued_at', sa.DateTime(), nullable=True))
        # Tokens issued before this revision have no fingerprint: the server adopts them under the
        # join secret in force at their next use.
        batch_op.add_column(sa.Column('join_fingerprint', sa.String(length=16), nullable=True))
    op.execute("UPDATE workers SET token_issued_at = created_at")
    with op.batch_alter_table('workers') as batch_op:
        batch_op.alter_column('token_issued_at', existing_type=sa.DateTime(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch_op:
        batch_op.drop_column('join_fingerprint')
        batch_op.drop_column('token_issued_at')
        batch_op.drop_column('revoked_at')
