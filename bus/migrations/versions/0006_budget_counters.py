"""budget reservations as counters: each budgeted run's subtree spend and holds, each admitted assignment's hold

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:30:00
"""
import json

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COUNTERS = ('tree_spent_tokens', 'tree_spent_cost_usd', 'tree_held_tokens', 'tree_held_cost_usd', 'tree_in_flight')
HELD_FINAL = "held_tokens IS NOT NULL AND status IN ('done', 'failed', 'dead')"
DEFAULT_TOKENS, DEFAULT_COST_USD = 100_000, 1.0  # bus.envelope.Budget's defaults when this revision was written


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        for name in COUNTERS:
            kind = sa.Double() if name.endswith('usd') else sa.Integer()
            batch_op.add_column(sa.Column(name, kind, nullable=False, server_default='0'))
        batch_op.create_index('ix_runs_root_run_id', ['root_run_id'], unique=False)
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_tokens', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('held_cost_usd', sa.Double(), nullable=True))
    op.create_index('ix_agent_messages_held_final', 'agent_messages', ['run_id'], unique=False,
                    sqlite_where=sa.text(HELD_FINAL), postgresql_where=sa.text(HELD_FINAL))
    _backfill(op.get_bind())
    with op.batch_alter_table('runs', schema=None) as batch_op:
        for name in COUNTERS:
            batch_op.alter_column(name, server_default=None)


def _backfill(conn) -> None:
    """Admitted, unsettled assignments under a budget hold their budget; each budgeted run's counters sum its
    subtree (settled spend from the runs, holds from the assignments)."""
    runs = {r.id: r for r in conn.execute(sa.text("SELECT id, parent_run_id, budget, spent_tokens, spent_cost_usd "
                                                  "FROM runs"))}

    def above(run_id):
        node, seen = run_id, []
        while node in runs and node not in seen:
            seen.append(node)
            node = runs[node].parent_run_id
        return [n for n in seen if runs[n].budget and runs[n].budget != 'null']
    counters = {}
    for run_id, run in runs.items():
        for b in above(run_id):
            c = counters.setdefault(b, dict.fromkeys(COUNTERS, 0))
            c['tree_spent_tokens'] += run.spent_tokens
            c['tree_spent_cost_usd'] += run.spent_cost_usd
    held = conn.execute(sa.text(
        "SELECT m.id, m.run_id, m.payload FROM agent_messages m WHERE m.kind = 'assignment' AND m.status IN "
        "('dispatched', 'running', 'retry_wait', 'done', 'failed', 'dead') AND EXISTS (SELECT 1 FROM bus_events e "
        "WHERE e.message_id = m.id AND e.kind = 'execute_enqueued')")).all()
    for row in held:
        chain = above(row.run_id)
        if not chain:
            continue
        payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
        budget = (payload.get('__assignment') or {}).get('budget') or {}
        tokens = int(budget.get('maxTokens', DEFAULT_TOKENS))
        cost = float(budget.get('maxCostUsd', DEFAULT_COST_USD))
        conn.execute(sa.text("UPDATE agent_messages SET held_tokens = :t, held_cost_usd = :c WHERE id = :id"),
                     {"t": tokens, "c": cost, "id": row.id})
        for b in chain:
            c = counters.setdefault(b, dict.fromkeys(COUNTERS, 0))
            c['tree_held_tokens'] += tokens
            c['tree_held_cost_usd'] += cost
            c['tree_in_flight'] += 1
    for run_id, c in counters.items():
        conn.execute(sa.text("UPDATE runs SET " + ", ".join(f"{k} = :{k}" for k in COUNTERS) + " WHERE id = :id"),
                     {**c, "id": run_id})


def downgrade() -> None:
    op.drop_index('ix_agent_messages_held_final', table_name='agent_messages')
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.drop_column('held_cost_usd')
        batch_op.drop_column('held_tokens')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_root_run_id')
        for name in reversed(COUNTERS):
            batch_op.drop_column(name)
