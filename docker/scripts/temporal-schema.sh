#!/bin/sh
# One-shot job: create Temporal's two databases on PostgreSQL and bring their schemas up to the
# version the admin-tools image ships. Safe to run on every `up`: existing databases are kept.
set -eu

SCHEMA_DIR=/etc/temporal/schema/postgresql/v12
sql_tool() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" \
        -u "$POSTGRES_USER" "$@"
}

echo "Waiting for PostgreSQL at $POSTGRES_SEEDS:$DB_PORT ..."
nc -z -w 10 "$POSTGRES_SEEDS" "$DB_PORT"

for db in temporal temporal_visibility; do
    if [ "$db" = temporal ]; then versioned="$SCHEMA_DIR/temporal/versioned"; else
        versioned="$SCHEMA_DIR/visibility/versioned"; fi
    # Both fail once the database / the version table exists: later runs only update.
    sql_tool --db "$db" create || echo "database $db already exists"
    sql_tool --db "$db" setup-schema -v 0.0 || echo "schema of $db already set up"
    sql_tool --db "$db" update-schema -d "$versioned"
done
echo "Temporal schemas are up to date"
