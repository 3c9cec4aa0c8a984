#!/bin/sh
# mixopt-worker-slot: the worker image's entrypoint. Gives every `mixopt worker` started from the
# same state volume (e.g. `docker compose up --scale worker=N`) a slot of its own:
#
# - slot i is the first of slot-0, slot-1, ... under MIXOPT_SLOT_ROOT whose lock no running
#   worker holds (flock; the lock lives as long as the worker process), so replicas never share
#   a state directory, and a restarted or recreated replica takes over a free slot with its
#   identity and its outbox (results that could not be delivered yet are delivered then);
# - the worker's state directory is the slot, and its name MIXOPT_WORKER_PREFIX-slot<i>;
# - when CUDA_VISIBLE_DEVICES is unset and nvidia-smi sees G GPUs, slot i trains on GPU i mod G:
#   compose hands every replica the same GPUs, so this is what spreads N replicas over N GPUs.
#
# Any other command (`mixopt corpus prepare ...`, `bash`) runs unchanged.
#
# Environment:
#   MIXOPT_SLOT_ROOT      where the slots live [/var/lib/mixopt/workers]
#   MIXOPT_MAX_SLOTS      how many slots to try [256]
#   MIXOPT_WORKER_PREFIX  the worker names' prefix [the container's hostname]
set -eu

if [ "${1:-}" != "mixopt" ] || [ "${2:-}" != "worker" ]; then
    exec "$@"
fi

root="${MIXOPT_SLOT_ROOT:-/var/lib/mixopt/workers}"
max="${MIXOPT_MAX_SLOTS:-256}"
mkdir -p "$root"
slot=0
while [ "$slot" -lt "$max" ]; do
    mkdir -p "$root/slot-$slot"
    exec 9>"$root/slot-$slot/lock"
    if flock -n 9; then
        break
    fi
    exec 9>&-
    slot=$((slot + 1))
done
if [ "$slot" -ge "$max" ]; then
    echo "mixopt-worker-slot: all $max slots under $root are taken" >&2
    exit 1
fi

if [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [ "${gpus:-0}" -gt 0 ]; then
        CUDA_VISIBLE_DEVICES=$((slot % gpus))
        export CUDA_VISIBLE_DEVICES
    fi
fi

echo "mixopt-worker-slot: slot $slot ($root/slot-$slot), CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}" >&2
# fd 9 stays open through exec: the worker itself holds the slot's lock.
exec "$@" --state-dir "$root/slot-$slot" --name "${MIXOPT_WORKER_PREFIX:-$(hostname)}-slot$slot"
