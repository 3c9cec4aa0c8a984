#!/bin/bash
# The mixopt server on a login or service node (or as a long CPU job: `sbatch --time=7-0
# --cpus-per-task=4 --mem=8G deploy/slurm/server.sh`). It serves every worker of the cluster.
#
#   export MIXOPT_DATABASE_URL=postgresql+psycopg://mixopt:...@dbhost:5432/mixopt   # or SQLite (default)
#   export MIXOPT_ADMIN_TOKEN=...                                                    # bootstrap admin token
#   deploy/slurm/server.sh
#
# It migrates the database, then serves on all interfaces with authentication on, and writes
# its URL to MIXOPT_DATA_DIR/server-url (and the join secret, unless given, to
# MIXOPT_DATA_DIR/join-secret, readable by you only), where worker.sbatch finds both when
# MIXOPT_DATA_DIR is on the shared filesystem.
#
# Environment (besides the server's MIXOPT_* settings):
#   MIXOPT_DATA_DIR  the shared mixopt directory [~/.local/share/mixopt]
#   MIXOPT_HOST      bind address [0.0.0.0]
#   MIXOPT_PORT      port [8000]
#   MIXOPT_VENV      a virtualenv with mixopt installed, activated first [none: mixopt on PATH]
set -euo pipefail

if [ -n "${MIXOPT_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$MIXOPT_VENV/bin/activate"
fi
export MIXOPT_DATA_DIR="${MIXOPT_DATA_DIR:-$HOME/.local/share/mixopt}"
export MIXOPT_HOST="${MIXOPT_HOST:-0.0.0.0}"
export MIXOPT_PORT="${MIXOPT_PORT:-8000}"
export MIXOPT_AUTH_ENABLED="${MIXOPT_AUTH_ENABLED:-true}"
export MIXOPT_AUTO_MIGRATE=false
mkdir -p "$MIXOPT_DATA_DIR"

mixopt db upgrade
if [ -z "${MIXOPT_JOIN_SECRET:-}" ]; then
    # create MIXOPT_DATA_DIR/join-secret now (owner-only), so that workers find it at once
    python -c "from service.settings import get_settings, resolve_join_secret; resolve_join_secret(get_settings())"
fi
address="$MIXOPT_HOST"
if [ "$address" = "0.0.0.0" ]; then
    address="$(hostname -f 2>/dev/null || hostname)"
fi
echo "http://$address:$MIXOPT_PORT" > "$MIXOPT_DATA_DIR/server-url"
echo "server.sh: serving http://$address:$MIXOPT_PORT (written to $MIXOPT_DATA_DIR/server-url)" >&2
exec mixopt server --host "$MIXOPT_HOST" --port "$MIXOPT_PORT"
