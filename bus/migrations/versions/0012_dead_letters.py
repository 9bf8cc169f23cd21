"""dead letters an operator can act on (agent_messages.dead_letter)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dead_letter', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.drop_column('dead_letter')
