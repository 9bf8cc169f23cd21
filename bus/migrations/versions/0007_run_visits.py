"""branch loop counters in their own rows (run_visits), so an arrival at a wide join reads and writes its own

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 13:10:00
"""
import json

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('run_visits',
                    sa.Column('run_id', sa.String(length=36), nullable=False),
                    sa.Column('scope', sa.String(length=64), nullable=False),
                    sa.Column('node_id', sa.String(length=128), nullable=False),
                    sa.Column('count', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('run_id', 'scope', 'node_id', name=op.f('pk_run_visits')))
    conn = op.get_bind()
    for run_id, visits in conn.execute(sa.text("SELECT id, visits FROM runs")).all():
        visits = json.loads(visits) if isinstance(visits, str) else (visits or {})
        branch = {k: n for k, n in visits.items() if k.rsplit('/', 1)[0]}
        if not branch:
            continue
        conn.execute(sa.text("INSERT INTO run_visits (run_id, scope, node_id, count) VALUES (:r, :s, :n, :c)"),
                     [{"r": run_id, "s": k.rsplit('/', 1)[0], "n": k.rsplit('/', 1)[1], "c": n}
                      for k, n in branch.items()])
        conn.execute(sa.text("UPDATE runs SET visits = :v WHERE id = :r"),
                     {"v": json.dumps({k: n for k, n in visits.items() if k not in branch}), "r": run_id})


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT run_id, scope, node_id, count FROM run_visits")).all()
    for run_id in {r.run_id for r in rows}:
        visits = conn.execute(sa.text("SELECT visits FROM runs WHERE id = :r"), {"r": run_id}).scalar()
        visits = json.loads(visits) if isinstance(visits, str) else (visits or {})
        visits |= {f"{r.scope}/{r.node_id}": r.count for r in rows if r.run_id == run_id}
        conn.execute(sa.text("UPDATE runs SET visits = :v WHERE id = :r"), {"v": json.dumps(visits), "r": run_id})
    op.drop_table('run_visits')
