"""trial segments for online strategies

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table('trial_segments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('mixture', JSON, nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('evaluate_after', sa.Boolean(), nullable=False),
    sa.Column('meta', JSON, nullable=False),
    sa.Column('losses', JSON, nullable=True),
    sa.Column('step_at_report', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('reported_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('trial_id', 'attempt', 'index')
    )
    with op.batch_alter_table('trial_segments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trial_segments_trial_id'), ['trial_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('trial_segments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trial_segments_trial_id'))

    op.drop_table('trial_segments')
