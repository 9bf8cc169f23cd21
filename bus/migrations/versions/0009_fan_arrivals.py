"""a join's arrivals as rows (fan_arrivals) and their count on the fan-in, so an arrival reads and writes its own

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 09:00:00
"""
import json

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('fan_arrivals',
                    sa.Column('run_id', sa.String(length=36), nullable=False),
                    sa.Column('fan_id', sa.String(length=64), nullable=False),
                    sa.Column('branch_index', sa.Integer(), nullable=False),
                    sa.Column('token_id', sa.String(length=160), nullable=False),
                    sa.Column('created_at', sa.Double(), nullable=False),
                    sa.PrimaryKeyConstraint('run_id', 'fan_id', 'branch_index', name=op.f('pk_fan_arrivals')))
    with op.batch_alter_table('fan_ins', schema=None) as batch_op:
        batch_op.add_column(sa.Column('arrived_count', sa.Integer(), nullable=False, server_default='0'))
    _backfill(op.get_bind())
    with op.batch_alter_table('fan_ins', schema=None) as batch_op:
        batch_op.alter_column('arrived_count', server_default=None)
        batch_op.drop_column('arrived')


def _backfill(conn) -> None:
    """A row per branch index of each fan-in's ``arrived`` list, with the token that arrived at the join when it is
    still there (else '': it was pruned), and the count."""
    fans = conn.execute(sa.text("SELECT run_id, fan_id, join_node, arrived, updated_at FROM fan_ins")).all()
    for fan in fans:
        arrived = json.loads(fan.arrived) if isinstance(fan.arrived, str) else (fan.arrived or [])
        if not arrived:
            continue
        joined = {}
        for token in conn.execute(sa.text("SELECT id, branch_index, created_at FROM tokens WHERE run_id = :r "
                                          "AND fan_id = :f AND node_id = :j ORDER BY created_at DESC"),
                                  {"r": fan.run_id, "f": fan.fan_id, "j": fan.join_node}):
            joined[token.branch_index] = token  # the earliest arrival of a branch is the one counted
        indexes = list(dict.fromkeys(arrived))
        conn.execute(sa.text("INSERT INTO fan_arrivals (run_id, fan_id, branch_index, token_id, created_at) "
                             "VALUES (:r, :f, :i, :t, :c)"),
                     [{"r": fan.run_id, "f": fan.fan_id, "i": i, "t": joined[i].id if i in joined else '',
                       "c": joined[i].created_at if i in joined else fan.updated_at} for i in indexes])
        conn.execute(sa.text("UPDATE fan_ins SET arrived_count = :n WHERE run_id = :r AND fan_id = :f"),
                     {"n": len(indexes), "r": fan.run_id, "f": fan.fan_id})


def downgrade() -> None:
    with op.batch_alter_table('fan_ins', schema=None) as batch_op:
        batch_op.add_column(sa.Column('arrived', sa.JSON(), nullable=False, server_default='[]'))
    conn = op.get_bind()
    arrived = {}
    for row in conn.execute(sa.text("SELECT run_id, fan_id, branch_index FROM fan_arrivals "
                                    "ORDER BY created_at, branch_index")):
        arrived.setdefault((row.run_id, row.fan_id), []).append(row.branch_index)
    for (run_id, fan_id), indexes in arrived.items():
        conn.execute(sa.text("UPDATE fan_ins SET arrived = :a WHERE run_id = :r AND fan_id = :f"),
                     {"a": json.dumps(indexes), "r": run_id, "f": fan_id})
    with op.batch_alter_table('fan_ins', schema=None) as batch_op:
        batch_op.alter_column('arrived', server_default=None)
        batch_op.drop_column('arrived_count')
    op.drop_table('fan_arrivals')
