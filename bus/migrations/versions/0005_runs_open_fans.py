"""how many fan-ins of a run are open (an event of a run with none skips reading them)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('open_fans', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE runs SET open_fans = (SELECT count(*) FROM fan_ins "
               "WHERE fan_ins.run_id = runs.id AND fan_ins.fired = false)")
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.alter_column('open_fans', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('open_fans')
