"""admission policies: tenant period spend (tenant_spend, agent_messages.period_held), what a deferred assignment
waits for (agent_messages.waiting_for, waiting_since) and the index of waiting assignments

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

WAITING = "kind = 'assignment' AND status = 'queued' AND waiting_for IS NOT NULL"


def upgrade() -> None:
    op.create_table('tenant_spend',
                    sa.Column('tenant', sa.String(length=128), nullable=False),
                    sa.Column('period', sa.String(length=16), nullable=False),
                    sa.Column('spent_usd', sa.Double(), nullable=False),
                    sa.Column('held_usd', sa.Double(), nullable=False),
                    sa.Column('updated_at', sa.Double(), nullable=False),
                    sa.PrimaryKeyConstraint('tenant', 'period', name=op.f('pk_tenant_spend')))
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('period_held', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('waiting_for', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('waiting_since', sa.Double(), nullable=True))
    op.create_index('ix_agent_messages_waiting', 'agent_messages', ['service', 'role', 'tenant'], unique=False,
                    sqlite_where=sa.text(WAITING), postgresql_where=sa.text(WAITING))


def downgrade() -> None:
    op.drop_index('ix_agent_messages_waiting', table_name='agent_messages')
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.drop_column('waiting_since')
        batch_op.drop_column('waiting_for')
        batch_op.drop_column('period_held')
    op.drop_table('tenant_spend')
