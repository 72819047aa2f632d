#!/usr/bin/env bash
# The README's first command: installs what is missing, builds Concord, starts a local
# deployment of three regions (`concord cluster up`: each region with its own NATS
# server, a leader and a follower, linked through a fault-injecting proxy), and walks through writes
# in every region, a partition with concurrent writes to one key, heal and convergence,
# durability levels, the conflict log and a resolution, and a leader failover: us-east's
# leader is SIGKILLed, its follower takes the lease and leads, and the old leader,
# started again, rejoins as a follower.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/setup.sh
export PATH="$PWD/.tools/venv/bin:$PATH"
cargo build --locked -p concord
C=./target/debug/concord
DIR=.cluster
rm -rf "$DIR"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

$C cluster up --dir "$DIR" --followers 1 &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [ -f "$DIR/cluster.json" ] && break; sleep 0.1; done
[ -f "$DIR/cluster.json" ] || { echo "the cluster did not come up; see $DIR/logs" >&2; exit 1; }
US=http://127.0.0.1:8301 US2=http://127.0.0.1:8302 EU=http://127.0.0.1:8311 AP=http://127.0.0.1:8321
# The API takes requests with the deployment's token only; the CLI reads it from
# CONCORD_TOKEN (or .cluster/cluster.json), curl is given it here.
export CONCORD_TOKEN="$(cat "$DIR/secrets/api-token")"
curl() { command curl -H "Authorization: Bearer $CONCORD_TOKEN" "$@"; }

say "cluster.json: what runs where"
cat "$DIR/cluster.json"

say "without the token, the API answers 401"
run command curl -s -w ' (HTTP %{http_code})\n' "$US/v1/kv/users/alice"

wait_converged() {
  # Until every region reports no lag and the same applied vector.
  for _ in $(seq 1 300); do
    a=$(curl -s $US/v1/status); b=$(curl -s $EU/v1/status); c=$(curl -s $AP/v1/status)
    if python3 - "$a" "$b" "$c" <<'PY'
import json, sys
s = [json.loads(x) for x in sys.argv[1:]]
ok = all(l.get("seq") == 0 for x in s for l in x["lag"].values()) and s[0]["applied"] == s[1]["applied"] == s[2]["applied"]
sys.exit(0 if ok else 1)
PY
    then return 0; fi
    sleep 0.2
  done
  echo "regions did not converge" >&2; return 1
}

say "Writes in every region; each is read back from the others (changesets travel over NATS)"
run $C put --endpoint $US users alice '{"name":"Alice","city":"Boston"}'
run $C put --endpoint $EU users bob '{"name":"Bob","city":"Dublin"}'
run $C put --endpoint $AP users chandra '{"name":"Chandra","city":"Mumbai"}'
wait_converged
run $C get --endpoint $AP users alice
run $C get --endpoint $US users bob
run $C ls --endpoint $EU users

say "A document: created once in us-east, then incremented and edited from every region"
run $C doc --endpoint $US docs cart --ops '[{"op":"set","path":["owner"],"value":"alice"},{"op":"inc","path":["items"],"by":0},{"op":"splice","path":["note"],"pos":0,"del":0,"text":"leave at door"}]'
wait_converged
run $C doc --endpoint $US docs cart --ops '[{"op":"inc","path":["items"],"by":2}]'
run $C doc --endpoint $EU docs cart --ops '[{"op":"inc","path":["items"],"by":3},{"op":"insert","path":["lines",0],"value":{"sku":"A-1","qty":2}}]'
run $C doc --endpoint $AP docs cart --ops '[{"op":"inc","path":["items"],"by":1},{"op":"splice","path":["note"],"pos":13,"del":0,"text":", ring twice"}]'
wait_converged
run $C doc --endpoint $AP docs cart

say "Partition: cut eu-west off from the other regions (the proxies close its links for real)"
run $C cluster partition --dir "$DIR" eu-west
echo "Both sides keep taking writes, to the same key:"
run $C put --endpoint $US users dana '{"name":"Dana","plan":"pro"}'
run $C put --endpoint $EU users dana '{"name":"Dana","plan":"enterprise"}'
echo "us-east and ap-south see one value, eu-west its own:"
sleep 1
run $C get --endpoint $AP users dana
run $C get --endpoint $EU users dana
echo "A write that needs every region answers 504 naming the unreachable one (it stays durable and still replicates):"
run curl -s -X PUT "$US/v1/kv/users/erin?durability=all&timeout_ms=2000" -d '{"name":"Erin"}'; echo
echo "A write that needs one other region succeeds through ap-south:"
run curl -s -X PUT "$US/v1/kv/users/frank?durability=remote" -d '{"name":"Frank"}'; echo

say "Heal: every region converges to one winner (highest hybrid-logical-clock time)"
run $C cluster heal --dir "$DIR"
wait_converged
for ep in $US $EU $AP; do printf '%s: ' "$ep"; $C get --endpoint $ep users dana; done
run $C get --endpoint $EU users erin

say "The conflict log: every region recorded the concurrent writes, with every version and the winner"
run $C conflicts --endpoint $EU
run $C conflicts --endpoint $AP --key dana --json
ID=$($C conflicts --endpoint $US --key dana --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])")
PICK=$($C conflicts --endpoint $US --key dana --json | python3 -c "import json,sys; r=json.load(sys.stdin)[0]; print([v['id'] for v in r['versions'] if v['id'] != r['winner']][0])")
echo "Resolve it from us-east by picking the version that lost (a write that supersedes every competing one):"
run $C resolve --endpoint $US "$ID" --pick "$PICK"
wait_converged
for ep in $US $EU $AP; do printf '%s: ' "$ep"; $C get --endpoint $ep users dana; done
run $C conflicts --endpoint $AP --key dana

say "Local-first clients: automerge-repo's sync protocol on every node (GET /v1/sync)"
# tests/sync/client.py: an automerge-repo client in Python (its log: $DIR/sync-client.log).
sync_client() { .tools/venv/bin/python tests/sync/client.py "$@" 2>>"$DIR/sync-client.log"; }
ws() { echo "ws://${1#http://}/v1/sync"; }
DOC=$(sync_client create --url "$(ws $AP)" --token "$CONCORD_TOKEN" --store "$DIR/phone.am" \
  --json '{"title":"groceries"}' --text-key notes --text "milk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["doc_id"])')
echo "A phone created $DOC through ap-south; eu-west serves it over HTTP:"
for _ in $(seq 1 100); do curl -sf "$EU/v1/docs/sync/${DOC#automerge:}" >/dev/null && break; sleep 0.1; done
run curl -s "$EU/v1/docs/sync/${DOC#automerge:}"; echo
echo "A laptop syncs it from eu-west; both edit it offline (the same title), then sync:"
sync_client sync --url "$(ws $EU)" --token "$CONCORD_TOKEN" --store "$DIR/laptop.am" --doc "$DOC" >/dev/null
sync_client edit --store "$DIR/phone.am" --set 'title="groceries (phone)"' --insert notes 4 ", eggs" >/dev/null
sync_client edit --store "$DIR/laptop.am" --set 'title="groceries (laptop)"' --insert notes 0 "oat " >/dev/null
sync_client sync --url "$(ws $AP)" --token "$CONCORD_TOKEN" --store "$DIR/phone.am" >/dev/null
sync_client sync --url "$(ws $EU)" --token "$CONCORD_TOKEN" --store "$DIR/laptop.am" >/dev/null
wait_converged
echo "Every region holds both edits; the title's conflict is in the conflict log:"
run curl -s "$US/v1/docs/sync/${DOC#automerge:}"; echo
run $C conflicts --endpoint $US --key "${DOC#automerge:}"
echo "The phone syncs again and holds the same document:"
sync_client sync --url "$(ws $AP)" --token "$CONCORD_TOKEN" --store "$DIR/phone.am" \
  | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["doc"]))'

say "Bad input is refused with a clear error, and nothing changes"
run curl -s -X PUT "$US/v1/kv/users/" -d x; echo
run curl -s -X POST "$US/v1/docs/docs/cart" -d '{"ops":[{"op":"inc","path":["owner"],"by":1}]}'; echo

say "Failover: SIGKILL the us-east leader under its lease; its follower takes over"
role() {  # one line of a node's status: who it is, its role, whom it follows
  curl -s --max-time 2 "$1/v1/status" | python3 -c "import json,sys; s=json.load(sys.stdin); print(f\"{s['node']}: role {s['role']} ({s['writer']}), region leader {s['leader'] or '-'} epoch {s['leader_epoch']}\")" \
    || echo "$1: not answering"
}
role $US; role $US2
run $C cluster kill --dir "$DIR" us-east-1
START=$(date +%s%N)
for _ in $(seq 1 300); do
  [ "$(curl -s --max-time 1 $US2/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["writer"])' 2>/dev/null)" = writing ] && break
  sleep 0.1
done
echo "us-east-2 writes as us-east $(( ($(date +%s%N) - START) / 1000000 )) ms after the kill (a lease lasts lease_ttl_ms = 3000 from its last renewal)"
role $US2
echo "us-east keeps taking writes, now at us-east-2:"
run $C put --endpoint $US2 users gita '{"name":"Gita"}'
run $C put --endpoint $EU users hana '{"name":"Hana"}'
echo "The old leader, started again on its data, rejoins as a follower of the new one:"
run $C cluster start --dir "$DIR" us-east-1
for _ in $(seq 1 300); do curl -s --max-time 1 $US/v1/status >/dev/null 2>&1 && break; sleep 0.1; done
role $US
echo "A write sent to it is redirected to the leader (the CLI follows; curl shows the 307):"
run curl -s -o /dev/null -w '%{http_code} -> %{redirect_url}\n' -X PUT "$US/v1/kv/users/ivan" -d '{"name":"Ivan"}'
run $C put --endpoint $US users ivan '{"name":"Ivan"}'
wait_converged
run $C get --endpoint $AP users gita
run $C get --endpoint $US users hana
run $C get --endpoint $EU users ivan

say "Done"
echo "Run a deployment yourself with:"
echo "  (and watch its conflict log live with: $C conflicts --follow)"
echo "  $C cluster up --dir .cluster     (Ctrl-C stops it; partition/heal/kill/start from another shell)"
echo "  $C cluster up --dir .cluster --followers 1 --nats-servers 3     (a follower per region and a three-server JetStream cluster per region)"
