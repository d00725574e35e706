#!/bin/sh
# One-shot job: create the engine's namespace and register the search attributes the engine
# sets on each run's workflow (so the Temporal UI can filter runs by status, workflow and
# decision). Safe to run on every `up`.
set -eu

NAMESPACE=${WFE_NAMESPACE:-default}
HOST=$(echo "$TEMPORAL_ADDRESS" | cut -d: -f1)
PORT=$(echo "$TEMPORAL_ADDRESS" | cut -d: -f2)
# IPv4 address of the frontend: the CLI may otherwise try an IPv6 address it cannot reach.
ADDRESS="$(getent ahosts "$HOST" | grep STREAM | head -1 | awk '{print $1}'):$PORT"

attempt=0
until temporal operator cluster health --address "$ADDRESS"; do
    attempt=$((attempt + 1))
    [ "$attempt" -lt 30 ] || { echo "Temporal at $ADDRESS is not healthy"; exit 1; }
    sleep 2
done

temporal operator namespace describe --namespace "$NAMESPACE" --address "$ADDRESS" >/dev/null 2>&1 ||
    temporal operator namespace create --namespace "$NAMESPACE" --retention 7d --address "$ADDRESS"

for pair in WfeRunStatus:Keyword WfeWorkflowId:Keyword WfeRunId:Keyword WfeAttempt:Int DecisionOutcome:Keyword; do
    attribute="${pair%%:*}"
    kind="${pair#*:}"
    attempt=0
    # A new namespace takes a few seconds to reach every service: retry.
    until temporal operator search-attribute list --namespace "$NAMESPACE" --address "$ADDRESS" |
        grep -qw "$attribute"; do
        attempt=$((attempt + 1))
        [ "$attempt" -lt 30 ] || { echo "could not register $attribute"; exit 1; }
        temporal operator search-attribute create --namespace "$NAMESPACE" --name "$attribute" \
            --type "$kind" --address "$ADDRESS" || sleep 2
    done
done
echo "Namespace $NAMESPACE is ready"
