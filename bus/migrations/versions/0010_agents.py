"""the agent registry (agents)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agents',
                    sa.Column('agent_id', sa.String(length=255), nullable=False),
                    sa.Column('process', sa.String(length=128), nullable=False),
                    sa.Column('hostname', sa.String(length=255), nullable=False),
                    sa.Column('pid', sa.Integer(), nullable=False),
                    sa.Column('routes', sa.JSON(), nullable=False),
                    sa.Column('version', sa.String(length=64), nullable=False),
                    sa.Column('software', sa.String(length=64), nullable=False),
                    sa.Column('models', sa.JSON(), nullable=False),
                    sa.Column('capacity', sa.Integer(), nullable=False),
                    sa.Column('state', sa.String(length=16), nullable=False),
                    sa.Column('running', sa.Integer(), nullable=False),
                    sa.Column('assignments_done', sa.Integer(), nullable=False),
                    sa.Column('heartbeat_s', sa.Double(), nullable=False),
                    sa.Column('started_at', sa.Double(), nullable=False),
                    sa.Column('heartbeat_at', sa.Double(), nullable=False),
                    sa.Column('stopped_at', sa.Double(), nullable=True),
                    sa.PrimaryKeyConstraint('agent_id', name=op.f('pk_agents')))
    op.create_index(op.f('ix_agents_heartbeat_at'), 'agents', ['heartbeat_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_agents_heartbeat_at'), table_name='agents')
    op.drop_table('agents')
