"""the token that owns each fan-in (so an arrival loads it without loading every token)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('fan_ins', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner_token_id', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('fan_ins', schema=None) as batch_op:
        batch_op.drop_column('owner_token_id')
