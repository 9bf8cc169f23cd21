"""each run's counts of active and of waiting tokens, kept by phase 1 (an event no longer counts its run's tokens)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 13:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

ACTIVE = "('pending', 'dispatched', 'waiting')"


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('active_tokens', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('waiting_tokens', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE runs SET active_tokens = (SELECT count(*) FROM tokens WHERE tokens.run_id = runs.id "
               f"AND tokens.status IN {ACTIVE}), waiting_tokens = (SELECT count(*) FROM tokens "
               "WHERE tokens.run_id = runs.id AND tokens.status = 'waiting')")
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.alter_column('active_tokens', server_default=None)
        batch_op.alter_column('waiting_tokens', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('waiting_tokens')
        batch_op.drop_column('active_tokens')
