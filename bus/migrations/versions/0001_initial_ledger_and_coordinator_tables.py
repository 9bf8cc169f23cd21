"""initial ledger and coordinator tables

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 22:13:38.883357
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agent_messages',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('service', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=64), nullable=False),
    sa.Column('shard', sa.Integer(), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('causation_id', sa.String(length=36), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('retry_at', sa.Double(), nullable=True),
    sa.Column('lease_until', sa.Double(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_error_at', sa.Double(), nullable=True),
    sa.Column('result_snippet', sa.Text(), nullable=True),
    sa.Column('result_url', sa.Text(), nullable=True),
    sa.Column('usage_tokens', sa.Integer(), nullable=False),
    sa.Column('usage_cost_usd', sa.Double(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.Column('published_at', sa.Double(), nullable=True),
    sa.Column('settled_at', sa.Double(), nullable=True),
    sa.Column('run_version', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agent_messages'))
    )
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_agent_messages_causation_id'), ['causation_id'], unique=False)
        batch_op.create_index('ix_agent_messages_open', ['status', 'updated_at'], unique=False, sqlite_where=sa.text("status NOT IN ('settled', 'done', 'failed', 'dead')"), postgresql_where=sa.text("status NOT IN ('settled', 'done', 'failed', 'dead')"))
        batch_op.create_index(batch_op.f('ix_agent_messages_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_agent_messages_status_updated_at'), ['status', 'updated_at'], unique=False)

    op.create_table('approvals',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('token_id', sa.String(length=160), nullable=False),
    sa.Column('node_id', sa.String(length=128), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=True),
    sa.Column('requested_at', sa.Double(), nullable=False),
    sa.Column('expires_at', sa.Double(), nullable=True),
    sa.Column('decided_at', sa.Double(), nullable=True),
    sa.Column('decided_by', sa.String(length=128), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approvals'))
    )
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approvals_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_approvals_status_tenant'), ['status', 'tenant'], unique=False)

    op.create_table('branch_scopes',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('fan_id', sa.String(length=64), nullable=False),
    sa.Column('branch_index', sa.Integer(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_branch_scopes'))
    )
    with op.batch_alter_table('branch_scopes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_branch_scopes_run_id_fan_id'), ['run_id', 'fan_id'], unique=False)

    op.create_table('bus_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=36), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=True),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bus_events'))
    )
    with op.batch_alter_table('bus_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bus_events_kind_created_at'), ['kind', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_bus_events_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bus_events_run_id'), ['run_id'], unique=False)

    op.create_table('fan_ins',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('fan_id', sa.String(length=64), nullable=False),
    sa.Column('join_node', sa.String(length=128), nullable=False),
    sa.Column('expected', sa.Integer(), nullable=False),
    sa.Column('arrived', sa.JSON(), nullable=False),
    sa.Column('fired', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('run_id', 'fan_id', name=op.f('pk_fan_ins'))
    )
    op.create_table('introspection_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('parent_run_id', sa.String(length=36), nullable=True),
    sa.Column('category', sa.String(length=16), nullable=False),
    sa.Column('type', sa.String(length=96), nullable=False),
    sa.Column('token_id', sa.String(length=160), nullable=True),
    sa.Column('node_id', sa.String(length=128), nullable=True),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_introspection_events'))
    )
    with op.batch_alter_table('introspection_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_introspection_events_run_id_id'), ['run_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_introspection_events_type'), ['type'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('intent', sa.String(length=128), nullable=False),
    sa.Column('workflow', sa.String(length=128), nullable=False),
    sa.Column('workflow_version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('parent_run_id', sa.String(length=36), nullable=True),
    sa.Column('parent_token_id', sa.String(length=160), nullable=True),
    sa.Column('root_run_id', sa.String(length=36), nullable=False),
    sa.Column('depth', sa.Integer(), nullable=False),
    sa.Column('input', sa.JSON(), nullable=False),
    sa.Column('context', sa.JSON(), nullable=False),
    sa.Column('output', sa.JSON(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('budget', sa.JSON(), nullable=True),
    sa.Column('spent_tokens', sa.Integer(), nullable=False),
    sa.Column('spent_cost_usd', sa.Double(), nullable=False),
    sa.Column('visits', sa.JSON(), nullable=False),
    sa.Column('token_seq', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.Column('ended_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_parent_run_id'), ['parent_run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_status_updated_at'), ['status', 'updated_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_tenant_created_at'), ['tenant', 'created_at'], unique=False)

    op.create_table('tokens',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('id', sa.String(length=160), nullable=False),
    sa.Column('node_id', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('scope', sa.String(length=64), nullable=True),
    sa.Column('fan_id', sa.String(length=64), nullable=True),
    sa.Column('branch_index', sa.Integer(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('iteration', sa.Integer(), nullable=False),
    sa.Column('assignment_id', sa.String(length=36), nullable=True),
    sa.Column('child_run_id', sa.String(length=36), nullable=True),
    sa.Column('wait', sa.JSON(), nullable=True),
    sa.Column('output', sa.JSON(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('run_id', 'id', name=op.f('pk_tokens'))
    )
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tokens_run_id_status'), ['run_id', 'status'], unique=False)

    op.create_table('workflow_definitions',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'version', name=op.f('pk_workflow_definitions'))
    )


def downgrade() -> None:
    op.drop_table('workflow_definitions')
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_run_id_status'))

    op.drop_table('tokens')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_tenant_created_at'))
        batch_op.drop_index(batch_op.f('ix_runs_status_updated_at'))
        batch_op.drop_index(batch_op.f('ix_runs_parent_run_id'))

    op.drop_table('runs')
    with op.batch_alter_table('introspection_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_introspection_events_type'))
        batch_op.drop_index(batch_op.f('ix_introspection_events_run_id_id'))

    op.drop_table('introspection_events')
    op.drop_table('fan_ins')
    with op.batch_alter_table('bus_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bus_events_run_id'))
        batch_op.drop_index(batch_op.f('ix_bus_events_message_id'))
        batch_op.drop_index(batch_op.f('ix_bus_events_kind_created_at'))

    op.drop_table('bus_events')
    with op.batch_alter_table('branch_scopes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_branch_scopes_run_id_fan_id'))

    op.drop_table('branch_scopes')
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approvals_status_tenant'))
        batch_op.drop_index(batch_op.f('ix_approvals_run_id'))

    op.drop_table('approvals')
    with op.batch_alter_table('agent_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_messages_status_updated_at'))
        batch_op.drop_index(batch_op.f('ix_agent_messages_run_id'))
        batch_op.drop_index('ix_agent_messages_open', sqlite_where=sa.text("status NOT IN ('settled', 'done', 'failed', 'dead')"), postgresql_where=sa.text("status NOT IN ('settled', 'done', 'failed', 'dead')"))
        batch_op.drop_index(batch_op.f('ix_agent_messages_causation_id'))

    op.drop_table('agent_messages')
