#!/bin/sh
# Sends one signed TheQuickAssist event of each type to hookrelay (compose stack).
# Usage (host): docker compose run --rm samples   or   deploy/compose/send-samples.sh http://127.0.0.1:8080
set -eu
URL="${1:-http://hookrelay:8080}"
SECRET="${QUICKASSIST_WEBHOOK_SECRET:-dev-secret}"
n=$(date +%s)
for event in message.delivered message.read message.failed template.status_update; do
  body="{\"event\":\"$event\",\"timestamp\":\"2024-01-15T10:30:00Z\",\"data\":{\"messageId\":\"msg_sample_$n\"},\"webhookId\":\"whk_sample\"}"
  sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/^.* //')
  printf '%s: ' "$event"
  curl -sS "$URL/webhooks/quickassist" -H 'content-type: application/json' -H "x-webhook-signature: $sig" --data-binary "$body"
  echo
done
