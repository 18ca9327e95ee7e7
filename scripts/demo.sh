#!/usr/bin/env bash
# The main job on the embedded default: no AWS, no server. Initializes a local keyring in a
# temporary data directory, encrypts a file, rotates the key, decrypts, and shows the status.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin/greenlang-crypto
export GLC_DATA_DIR="${GLC_DATA_DIR:-$(mktemp -d /tmp/greenlang-demo.XXXXXX)}"
work=$(mktemp -d)
printf 'alice@example.com,+1-555-0100,203.0.113.7\n' > "$work/pii.csv"
echo "== init";            $BIN init
echo "== encrypt";         $BIN encrypt --tenant acme --data-class pii -i "$work/pii.csv" -o "$work/pii.enc"
echo "   $(wc -c < "$work/pii.csv") plaintext bytes -> $(wc -c < "$work/pii.enc") envelope bytes"
echo "== rotate";          $BIN keys rotate
echo "== decrypt (old version still readable)"
$BIN decrypt --tenant acme --data-class pii -i "$work/pii.enc" -o "$work/pii.out"
cmp "$work/pii.csv" "$work/pii.out" && echo "   round trip ok"
echo "== wrong tenant is refused"
if $BIN decrypt --tenant other --data-class pii -i "$work/pii.enc" -o /dev/null; then
  echo "   ERROR: decrypted under the wrong context" >&2; exit 1
fi
echo "== keys";            $BIN keys list
echo "== status";          $BIN status
echo "== audit";           $BIN audit verify
rm -rf "$work"
if [ "${GLC_DEMO_NO_SERVE:-}" = 1 ]; then exit 0; fi
PORT="${GLC_PORT:-8080}"
echo "== serve: admin API on http://127.0.0.1:$PORT (Ctrl-C to stop); GLC_DATA_DIR=$GLC_DATA_DIR"
echo "   token: GLC_DATA_DIR=$GLC_DATA_DIR $BIN token --tenant acme --permissions encryption:encrypt,encryption:decrypt"
exec $BIN serve --host 127.0.0.1 --port "$PORT"
