"""circuit breakers per service, role and model (circuits)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('circuits',
                    sa.Column('service', sa.String(length=64), nullable=False),
                    sa.Column('role', sa.String(length=64), nullable=False),
                    sa.Column('model', sa.String(length=128), nullable=False),
                    sa.Column('state', sa.String(length=16), nullable=False),
                    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
                    sa.Column('window_started_at', sa.Double(), nullable=True),
                    sa.Column('window_total', sa.Integer(), nullable=False),
                    sa.Column('window_failures', sa.Integer(), nullable=False),
                    sa.Column('opened_at', sa.Double(), nullable=True),
                    sa.Column('retry_at', sa.Double(), nullable=True),
                    sa.Column('open_count', sa.Integer(), nullable=False),
                    sa.Column('probe_id', sa.String(length=36), nullable=True),
                    sa.Column('reason', sa.Text(), nullable=True),
                    sa.Column('updated_at', sa.Double(), nullable=False),
                    sa.PrimaryKeyConstraint('service', 'role', 'model', name=op.f('pk_circuits')))
    op.create_table('circuit_cursor',
                    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
                    sa.Column('low_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
                    sa.Column('seen', sa.JSON(), nullable=False),
                    sa.Column('updated_at', sa.Double(), nullable=False),
                    sa.PrimaryKeyConstraint('id', name=op.f('pk_circuit_cursor')))


def downgrade() -> None:
    op.drop_table('circuit_cursor')
    op.drop_table('circuits')
