"""initial schema: studies, trials, leases, results, workers

Revision ID: 0001
Revises: 
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on Postgres; times are stored as naive UTC on both backends.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('state', sa.Enum('draft', 'running', 'paused', 'completed', 'failed', 'cancelled', name='studystate', native_enum=False, length=16), nullable=False),
    sa.Column('strategy', sa.String(length=64), nullable=False),
    sa.Column('strategy_params', JSON, nullable=False),
    sa.Column('objective', JSON, nullable=False),
    sa.Column('budget_cost', sa.Double(), nullable=True),
    sa.Column('budget_trials', sa.Integer(), nullable=True),
    sa.Column('parallelism', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('lease_seconds', sa.Double(), nullable=False),
    sa.Column('max_epochs', sa.Double(), nullable=True),
    sa.Column('dispatch', sa.String(length=16), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('workers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('capabilities', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=True),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('fidelities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('tokens', sa.Double(), nullable=True),
    sa.Column('cost', sa.Double(), nullable=False),
    sa.Column('is_target', sa.Boolean(), nullable=False),
    sa.Column('params', JSON, nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_id', 'name')
    )
    op.create_table('recommendations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('mixture', JSON, nullable=False),
    sa.Column('predicted', sa.Double(), nullable=True),
    sa.Column('uncertainty', sa.Double(), nullable=True),
    sa.Column('based_on_trials', sa.Integer(), nullable=False),
    sa.Column('meta', JSON, nullable=False),
    sa.Column('final', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('recommendations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recommendations_study_id'), ['study_id'], unique=False)

    op.create_table('study_domains',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('tokens', sa.Double(), nullable=True),
    sa.Column('min_weight', sa.Double(), nullable=False),
    sa.Column('max_weight', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_id', 'name')
    )
    op.create_table('trials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('fidelity_id', sa.Integer(), nullable=False),
    sa.Column('mixture', JSON, nullable=False),
    sa.Column('state', sa.Enum('queued', 'leased', 'running', 'completed', 'failed', 'cancelled', name='trialstate', native_enum=False, length=16), nullable=False),
    sa.Column('dynamic', sa.Boolean(), nullable=False),
    sa.Column('pool_index', sa.Integer(), nullable=True),
    sa.Column('strategy_meta', JSON, nullable=False),
    sa.Column('predicted', sa.Double(), nullable=True),
    sa.Column('uncertainty', sa.Double(), nullable=True),
    sa.Column('cost', sa.Double(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_id', sa.String(length=36), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('objective', sa.Double(), nullable=True),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['fidelity_id'], ['fidelities.id'], ),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_id', 'number')
    )
    with op.batch_alter_table('trials', schema=None) as batch_op:
        batch_op.create_index('ix_trials_state_expiry', ['state', 'lease_expires_at'], unique=False)
        batch_op.create_index('ix_trials_study_state', ['study_id', 'state'], unique=False)

    op.create_table('leases',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('worker_id', sa.Integer(), nullable=True),
    sa.Column('client', sa.String(length=128), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('last_heartbeat_at', sa.DateTime(), nullable=True),
    sa.Column('progress', JSON, nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('leases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_leases_trial_id'), ['trial_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_leases_worker_id'), ['worker_id'], unique=False)

    op.create_table('loss_curve_points',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=True),
    sa.Column('train_loss', sa.Double(), nullable=True),
    sa.Column('losses', JSON, nullable=False),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('trial_id', 'step')
    )
    with op.batch_alter_table('loss_curve_points', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_loss_curve_points_trial_id'), ['trial_id'], unique=False)

    op.create_table('results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('lease_id', sa.String(length=36), nullable=True),
    sa.Column('losses', JSON, nullable=False),
    sa.Column('metrics', JSON, nullable=False),
    sa.Column('objective', sa.Double(), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=True),
    sa.Column('wall_s', sa.Double(), nullable=True),
    sa.Column('payload_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('trial_id')
    )


def downgrade() -> None:
    op.drop_table('results')
    with op.batch_alter_table('loss_curve_points', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_loss_curve_points_trial_id'))

    op.drop_table('loss_curve_points')
    with op.batch_alter_table('leases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_leases_worker_id'))
        batch_op.drop_index(batch_op.f('ix_leases_trial_id'))

    op.drop_table('leases')
    with op.batch_alter_table('trials', schema=None) as batch_op:
        batch_op.drop_index('ix_trials_study_state')
        batch_op.drop_index('ix_trials_state_expiry')

    op.drop_table('trials')
    op.drop_table('study_domains')
    with op.batch_alter_table('recommendations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recommendations_study_id'))

    op.drop_table('recommendations')
    op.drop_table('fidelities')
    op.drop_table('workers')
    op.drop_table('studies')
