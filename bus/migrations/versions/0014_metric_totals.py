"""metrics folded from the audit log: metric_totals, its cursor (metric_cursor, one row),
agent_messages.dispatched_at (the start of an attempt's queue wait), on SQLite bus_events ids that are never
reused (AUTOINCREMENT: without it, once retention deleted the newest rows, new rows would take ids a cursor has read),
the cursors' marks (when the reader read up to which id, by its own clock: bus/cursor.py) and the index of a
tenant's recent audit rows of a kind (the metric cards)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':  # PostgreSQL's sequences never hand out an id twice
        with op.batch_alter_table('bus_events', recreate='always', table_kwargs={'sqlite_autoincrement': True}):
            pass
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dispatched_at', sa.Double(), nullable=True))
    op.create_index(op.f('ix_bus_events_tenant_kind_created_at'), 'bus_events', ['tenant', 'kind', 'created_at'],
                    unique=False)
    with op.batch_alter_table('circuit_cursor', schema=None) as batch_op:
        batch_op.add_column(sa.Column('marks', sa.JSON(), nullable=True))
    op.create_table('metric_totals',
                    sa.Column('name', sa.String(length=128), nullable=False),
                    sa.Column('labels', sa.String(length=1024), nullable=False),
                    sa.Column('value', sa.Double(), nullable=False),
                    sa.PrimaryKeyConstraint('name', 'labels', name=op.f('pk_metric_totals')))
    cursor = op.create_table('metric_cursor',
                             sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
                             sa.Column('low_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
                             sa.Column('seen', sa.JSON(), nullable=False),
                             sa.Column('marks', sa.JSON(), nullable=True),
                             sa.Column('retention_waiting_since', sa.Double(), nullable=True),
                             sa.Column('updated_at', sa.Double(), nullable=False),
                             sa.PrimaryKeyConstraint('id', name=op.f('pk_metric_cursor')))
    # The fold starts at the beginning of what the ledger still holds: every audit row is counted once.
    op.bulk_insert(cursor, [{'id': 1, 'low_id': 0, 'seen': [], 'updated_at': 0.0}])


def downgrade() -> None:
    op.drop_table('metric_cursor')
    op.drop_table('metric_totals')
    with op.batch_alter_table('circuit_cursor', schema=None) as batch_op:
        batch_op.drop_column('marks')
    op.drop_index(op.f('ix_bus_events_tenant_kind_created_at'), table_name='bus_events')
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.drop_column('dispatched_at')
    if op.get_bind().dialect.name == 'sqlite':
        with op.batch_alter_table('bus_events', recreate='always', table_kwargs={'sqlite_autoincrement': False}):
            pass
