#!/usr/bin/env bash
# RFC 9111 behaviour as http-tests/cache-tests (https://cache-tests.fyi) sees it: the suite's
# origin and client from npm (`http-cache-tests`), a release outpost in front of the origin,
# every test run once; prints the count of each result by the suite's kind (required,
# optimal, check) and the required and optimal tests that failed, with how the suite's
# published nginx and Varnish results fare on each. Loopback only; stops what it started.
#
#   benches/cache_tests.sh                      # BIN=target/release/outpost
#   OUTPOST_ARGS="--cache-dir /tmp/ct-disk" benches/cache_tests.sh
#
# CACHE_TESTS_DIR=DIR uses a checkout of the suite instead of installing it (then DIR is
# used as it is; its origin may then listen beyond loopback); JSON=FILE keeps the raw
# results (the suite's own results format). The npm release (0.4.5) is older than the
# GitHub tree behind cache-tests.fyi and judges by RFC 7234 in places (a 304 must not
# update Content-MD5 or Content-Range, which RFC 9111 §3.2 now requires), counts an error
# outpost makes itself when the origin drops the connection as "from cache"
# (`stale-close-*`), and runs Surrogate-Control tests; a checkout of
# https://github.com/http-tests/cache-tests is the suite as published. With that checkout
# (2026-12): required 159 of 160 (not `headers-store-Set-Cookie`: responses with
# Set-Cookie are stored only with cache.store_set_cookie), optimal 98 of 105, check 73 of 100.
# The optimal ones that fail (nginx and Varnish fail them too): `other-set-cookie` (as
# above); the four `partial-store-partial-reuse-partial*`, whose 206 says `bytes 4-9/10` (6
# bytes) over a 5-byte body, which outpost refuses to store; `conditional-lm-fresh-no-lm`,
# which wants a 304 to an If-Modified-Since 3000 s before the stored response's Date,
# where RFC 9111 §4.3.2 compares with that Date (the response is newer: 200); and
# `partial-store-partial-complete`, completing a stored partial by asking for the rest,
# which outpost does only under a strong validator, sent as If-Range (§3.4 combines
# pieces only when they share one), and that test's responses have none.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$HERE/../target/release/outpost}
ORIGIN_PORT=${ORIGIN_PORT:-18600}; PROXY_PORT=${PROXY_PORT:-18601}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
if [[ -n ${CACHE_TESTS_DIR:-} ]]; then
  SUITE=$CACHE_TESTS_DIR
else
  (cd "$WORK" && npm init -y >/dev/null && npm i --no-audit --no-fund http-cache-tests >/dev/null 2>&1) \
    || { echo "installing http-cache-tests from npm failed" >&2; exit 1; }
  SUITE=$WORK/node_modules/http-cache-tests
fi
# The npm release keeps its engine at the top; the GitHub tree under test-engine/.
ENGINE=$SUITE; [[ -d $SUITE/test-engine ]] && ENGINE=$SUITE/test-engine
if [[ -z ${CACHE_TESTS_DIR:-} ]]; then
  # The suite's origin listens on every interface; this copy listens on loopback.
  sed -i 's/server\.listen(port)$/server.listen(port, "127.0.0.1")/' "$ENGINE/server/server.mjs"
  grep -q 'server.listen(port, "127.0.0.1")' "$ENGINE/server/server.mjs" \
    || { echo "could not bind the suite's origin to loopback" >&2; exit 1; }
fi
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
# The engine takes its settings as npm passes them, in the environment (an id of "" runs
# every test).
export npm_config_protocol=http npm_config_port=$ORIGIN_PORT npm_config_pidfile=$WORK/origin.pid
(cd "$SUITE" && exec node "$ENGINE/server/server.mjs" >"$WORK/origin.log" 2>&1) &
PIDS+=($!)
wait_port "$ORIGIN_PORT"
# shellcheck disable=SC2086
OUTPOST_LOG__ACCESS_LOG=false "$BIN" serve --listen "127.0.0.1:$PROXY_PORT" \
  --origin "http://127.0.0.1:$ORIGIN_PORT" ${OUTPOST_ARGS:-} >"$WORK/outpost.log" 2>&1 &
PIDS+=($!)
wait_port "$PROXY_PORT"
results=${JSON:-$WORK/results.json}
(cd "$SUITE" && npm_config_id= npm_package_config_id= npm_config_base="http://127.0.0.1:$PROXY_PORT" timeout 900 node --no-warnings "$ENGINE/cli.mjs") >"$results"
cat >"$WORK/kinds.mjs" <<EOF
import tests from '$SUITE/tests/index.mjs'
// The npm release's CLI also runs its Surrogate-Control tests, kept outside the index.
const surrogate = await import('$SUITE/tests/surrogate-control.mjs').catch(() => null)
if (surrogate) tests.push(surrogate.default)
const kinds = {}
for (const suite of tests) for (const t of suite.tests) kinds[t.id] = t.kind || 'required'
console.log(JSON.stringify(kinds))
EOF
node "$WORK/kinds.mjs" >"$WORK/kinds.json"
python3 - "$results" "$WORK/kinds.json" "$SUITE/results" <<'EOF'
import json, os, sys
from collections import Counter
results, kinds = (json.load(open(p)) for p in sys.argv[1:3])
peers = {}
for name in ("nginx", "varnish"):
    path = os.path.join(sys.argv[3], name + ".json")
    if os.path.exists(path):
        peers[name] = json.load(open(path))
counts = Counter((kinds.get(t, "?"), v is True) for t, v in results.items())
for kind in ("required", "optimal", "check"):
    print(f"{kind:9} passed {counts[(kind, True)]:3} of {counts[(kind, True)] + counts[(kind, False)]}")
for test, verdict in sorted(results.items()):
    kind = kinds.get(test, "?")
    if verdict is True or kind == "check":
        continue
    others = " ".join(f"{n}={'pass' if r.get(test) is True else 'fail'}" for n, r in peers.items())
    print(f"  {kind:8} {test}: {verdict[1] if isinstance(verdict, list) else verdict}  ({others})")
EOF
