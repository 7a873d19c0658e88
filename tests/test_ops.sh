#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# veild run as a service (issue 15 items 12 and 13): a real veild with its
# key in a SoftHSM2 token, an API key file, and what an operator's tools
# read from it:
#  - its log: every line of the default form starts with an RFC 3339 time;
#    --log-format json gives one JSON object a line (time, level, msg; the
#    request lines with method, path, status); a standard error that is
#    the journal's stream ($JOURNAL_STREAM = its device:inode) gives
#    syslog priorities (<3> error ... <7> debug); 401, 413 and 429 lines
#    carry the client's address; every request line its path; the
#    host-side OAEP fallback is logged at info; no API key, PIN, prompt or
#    answer appears anywhere in the logs;
#  - systemd's notification socket: READY=1 once listening, RELOADING=1
#    (with MONOTONIC_USEC) then READY=1 around a SIGHUP, STOPPING=1 on
#    SIGTERM, in that order (a unix datagram socket of this test stands in
#    for systemd, as $NOTIFY_SOCKET);
#  - /healthz/live, /healthz/ready: a backend down is shown in the body and
#    the node stays ready (200); the key gone from the token makes it not
#    ready (503), while live stays 200;
#  - started with 1100 descriptors already open (so its sockets are
#    numbered above select()'s FD_SETSIZE), veild serves and stops cleanly.
# No timing: every wait polls for what the logs or answers say.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure, 77 when veil was built --without-systemd (then veild sends no
# notification; everything else here still runs).
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" ops curl python3 stat

# stop_veild: SIGTERM to the last veild started; its exit status
stop_veild() {
    local st=0
    kill -TERM "$VEILD_PID" && wait "$VEILD_PID" || st=$?
    return "$st"
}

# ------------------------------------------------------------------ setup

for label in ops ops-down; do
    "$K" generate --token "$TOK" --label "$label" --bits 2048 --module "$MOD" \
        --pin-source "file:$VEIL_TEST_PIN_FILE" >"$T/keygen.log" 2>&1 || {
        cat "$T/keygen.log"
        hard "veil-keys could not make the key $label"
    }
done
secret="vk-ops-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
wrong="vk-wrong-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
(umask 077 && printf '%s\n' "$secret" >"$T/a.key" && printf '%s\n' "$wrong" >"$T/wrong.key" &&
    printf 'sha256:%s alice\n' "$(printf '%s' "$secret" | sha256sum | cut -d' ' -f1)" >"$T/api_keys") ||
    hard "cannot write the API key files"
PROMPT="prompt-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"

# the flags of every veild here; a rate so slow that only the burst counts
VD=(--server-key "$TOK;object=ops" --module "$MOD" --pin-source "file:$VEIL_TEST_PIN_FILE"
    --api-keys "$T/api_keys" --rate 0.001 --burst 3 --model echo=echo)

chat() { "$V" chat --allow-http --url "$VEILD_URL" --api-key-file "$T/a.key" -m echo "$1"; }
# post [CURL ARGS...]: an empty completion POST; its status on stdout
post() {
    curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
        "$@" "$VEILD_URL/v1/chat/secure_completion"
}
# refusals: a 413 (no key needed: before admission), a 401, then POSTs
# with the key until the burst is used up (429)
refusals() {
    local i s
    s=$(post -H 'Content-Length: 99999999999')
    [ "$s" = 413 ] || echo "413 expected, got $s" >>"$T/refusals.log"
    s=$(post -H "Authorization: Bearer $wrong" -d x)
    [ "$s" = 401 ] || echo "401 expected, got $s" >>"$T/refusals.log"
    for ((i = 0; i < 6; i++)); do
        s=$(post -H "Authorization: Bearer $secret" -d x)
        [ "$s" = 429 ] && return 0
    done
    echo "no 429 after 6 requests" >>"$T/refusals.log"
}

# ------------------------------------------------ 1. text log, sd_notify

if [ "$("$B/veild" --help | grep -c 'sd_notify')" -eq 0 ]; then
    echo "veild was built without sd_notify (configure --without-systemd)"
    NO_NOTIFY=1
else
    NO_NOTIFY=0
fi

# systemd's side of the notification socket: one line per datagram
cat >"$T/listen.py" <<'EOF'
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path + ".tmp")
os.rename(path + ".tmp", path)
with open(log, "a") as f:
    while True:
        m = s.recv(65536).decode("utf-8", "replace")
        f.write(m.replace("\n", "|") + "\n")
        f.flush()
EOF
NOTIFY="$T/notify.sock" NLOG="$T/notify.log"
rm -f "$NOTIFY" "$NLOG"
python3 "$T/listen.py" "$NOTIFY" "$NLOG" &
LISTENER=$!
SUITE_PIDS+=("$LISTENER")
for ((i = 0; i < 1200; i++)); do [ -S "$NOTIFY" ] && break; sleep 0.05; done
[ -S "$NOTIFY" ] || hard "the notification socket was not made"

# a JOURNAL_STREAM that is not standard error's: no priorities
export NOTIFY_SOCKET="$NOTIFY" JOURNAL_STREAM="1:1"
veild_start text "${VD[@]}"
unset NOTIFY_SOCKET JOURNAL_STREAM
LOG1=$VEILD_LOG
if [ "$NO_NOTIFY" = 0 ]; then
    wait_for "$NLOG" "^READY=1"
    grep -qE "^READY=1\|STATUS=serving on http port $VEILD_PORT" "$NLOG" &&
        ok "READY=1 (with the port in STATUS) once veild listens" || bad "no READY=1" "$NLOG"
fi
check "a chat through veild (key alice)" 0 "$PROMPT" -- chat "$PROMPT"
refusals
[ -s "$T/refusals.log" ] && bad "the refusals" "$T/refusals.log" || ok "413, 401 and 429 answered"
curl -s "$VEILD_URL/nowhere" >/dev/null
n=$(count "$LOG1" "reloaded:")
kill -HUP "$VEILD_PID"
wait_for "$LOG1" "reloaded:" $((n + 1))
if [ "$NO_NOTIFY" = 0 ]; then
    wait_for "$NLOG" "^READY=1" 2
fi
stop_veild && ok "veild stopped cleanly (exit 0)" || bad "veild's exit status" "$LOG1"
if [ "$NO_NOTIFY" = 0 ]; then
    wait_for "$NLOG" "^STOPPING=1"
    cut -d'|' -f1 "$NLOG" | tr '\n' ' ' >"$T/order"
    [ "$(cat "$T/order")" = "READY=1 RELOADING=1 READY=1 STOPPING=1 " ] &&
        ok "READY=1, RELOADING=1, READY=1, STOPPING=1 in that order (start, SIGHUP, SIGTERM)" ||
        bad "the notifications" "$NLOG"
    grep -qE "^RELOADING=1\|.*MONOTONIC_USEC=[0-9]+" "$NLOG" &&
        ok "RELOADING=1 carries MONOTONIC_USEC (Type=notify-reload)" || bad "no MONOTONIC_USEC" "$NLOG"
fi

TS='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z'
grep -vE "^$TS veild: (error|warn|info|debug): " "$LOG1" >"$T/untimed"
[ -s "$LOG1" ] && [ ! -s "$T/untimed" ] &&
    ok "every line starts with an RFC 3339 time, then 'veild: LEVEL: '" ||
    bad "lines without the time, or with a priority prefix" "$T/untimed"
grep -qE "^$TS veild: info: POST /v1/chat/secure_completion 200 payload [^ ]+ key alice [0-9.]+ ms$" "$LOG1" &&
    ok "the chat's line: method, path, status, payload ID, key name, time" ||
    bad "no request line of the chat" "$LOG1"
for s in 413 401 429; do
    grep -qE "info: POST /v1/chat/secure_completion $s .*client 127\.0\.0\.1 [0-9.]+ ms$" "$LOG1" &&
        ok "the $s line carries the client's address" || bad "no client address on a $s line" "$LOG1"
done
grep -E "info: POST /v1/chat/secure_completion 200 " "$LOG1" | grep -q client &&
    bad "a 200 line carries the client's address" "$LOG1" || ok "a 200 line carries no address"
grep -qE "veild: info: pkcs11: .*key \"ops\": RSA-OAEP-SHA256 is refused by the token; using raw RSA \(CKM_RSA_X_509\) in the token and OAEP decoding on the host" "$LOG1" &&
    ok "the host-side OAEP fallback is logged at info" || bad "no info line for the OAEP fallback" "$LOG1"

# ------------------------------------------------------- 2. JSON lines

veild_start json "${VD[@]}" --log-format json --log-level debug
LOG2=$VEILD_LOG
check "a chat through veild (JSON log)" 0 "$PROMPT" -- chat "$PROMPT"
refusals
curl -s "$VEILD_URL/nowhere%0d%0aveild:%20error:%20forged" >/dev/null
curl -s "$VEILD_URL/healthz/live" >/dev/null
stop_veild && ok "veild stopped cleanly (exit 0)" || bad "veild's exit status" "$LOG2"
cat >"$T/logcheck.py" <<'EOF'
import json, re, sys
ts = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
bad, reqs = [], []
for n, line in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
    try:
        o = json.loads(line)
    except ValueError as e:
        bad.append(f"line {n} is not JSON ({e}): {line!r}")
        continue
    if not (isinstance(o, dict) and ts.match(o.get("time", "")) and
            o.get("level") in ("error", "warn", "info", "debug") and
            isinstance(o.get("msg"), str) and o.get("program") == "veild"):
        bad.append(f"line {n} lacks time, level, program or msg: {line!r}")
    if "method" in o:
        reqs.append(o)
def find(**kw):
    return [r for r in reqs if all(r.get(k) == v for k, v in kw.items())]
P = "/v1/chat/secure_completion"
if not find(method="POST", path=P, status=200, key="alice"):
    bad.append("no POST 200 line with key alice")
for s in (401, 413, 429):
    if not find(method="POST", path=P, status=s, client="127.0.0.1"):
        bad.append(f"no {s} line with the client's address")
if any("client" in r for r in find(status=200)):
    bad.append("a 200 line with the client's address")
if not find(method="GET", path="/healthz/live", status=200):
    bad.append("no GET /healthz/live line (debug)")
forged = [r for r in reqs if r.get("status") == 404]
if not forged or "\n" in forged[0]["path"] or "\r" in forged[0]["path"]:
    bad.append(f"the 404 line's path: {forged}")
for r in reqs:
    if not isinstance(r.get("ms"), (int, float)) or not isinstance(r.get("path"), str):
        bad.append(f"a request line without path or ms: {r}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
EOF
python3 "$T/logcheck.py" "$LOG2" >"$out" 2>&1 &&
    ok "--log-format json: every line is a JSON object (time, level, program, msg); requests with method, path, status, key, client on 401/413/429, ms" ||
    bad "the JSON log" "$out"
grep -q "^veild: error: forged" "$LOG2" && bad "a client's path forged a log line" "$LOG2" ||
    ok "a path with CR LF cannot forge a log line"

# ---------------------------------------------------------- 3. journal

# veild's standard error is the log file: its device and inode are what
# systemd would put in JOURNAL_STREAM for the journal's socket
LOG3="$VEIL_TEST_DIR/veild-journal.log"
: >"$LOG3"
printf 'log_level = info\n' >"$T/veild.conf" && chmod 600 "$T/veild.conf" || hard "cannot write veild.conf"
export JOURNAL_STREAM
JOURNAL_STREAM=$(stat -c '%d:%i' "$LOG3")
veild_start journal --config "$T/veild.conf" "${VD[@]}"
unset JOURNAL_STREAM
# a warning (a setting that needs a restart), then an error (a reload
# that fails)
printf 'log_level = info\nworkers = 7\n' >"$T/veild.conf"
kill -HUP "$VEILD_PID"
wait_for "$LOG3" "reloaded:"
printf 'log_level = info\nbogus = 1\n' >"$T/veild.conf"
kill -HUP "$VEILD_PID"
wait_for "$LOG3" "reload failed:"
stop_veild && ok "veild stopped cleanly (exit 0)" || bad "veild's exit status" "$LOG3"
grep -vE '^<[3467]>veild: (error|warn|info|debug): ' "$LOG3" >"$T/unprefixed"
[ ! -s "$T/unprefixed" ] && ok "on the journal's stream every line starts with its priority <N>" ||
    bad "lines without a priority" "$T/unprefixed"
grep -qE '^<6>veild: info: listening on' "$LOG3" && grep -qE '^<4>veild: warn: ' "$LOG3" &&
    grep -qE "^<3>veild: error: reload failed: $T/veild.conf:2: unknown setting 'bogus'" "$LOG3" &&
    ok "info is <6>, warn <4>, error <3> (journalctl -p err finds the failed reload)" ||
    bad "the priorities" "$LOG3"

# ------------------------------------------------------------ 4. health

veild_start health "${VD[@]}" --server-key "$TOK;object=ops-down" --model down=http://127.0.0.1:9/v1
LOG4=$VEILD_LOG
curl -s -o "$out" -w '%{http_code}' "$VEILD_URL/healthz/live" >"$T/code"
[ "$(cat "$T/code")" = 200 ] && grep -q '"status":"live"' "$out" && ok "GET /healthz/live: 200" ||
    bad "/healthz/live" "$out" "$T/code"
for p in /healthz/ready /healthz; do
    curl -s -o "$out" -w '%{http_code}' "$VEILD_URL$p" >"$T/code"
    [ "$(cat "$T/code")" = 200 ] && python3 -c '
import json, sys
o = json.load(open(sys.argv[1]))
assert o["ready"] is True and o["status"] == "degraded" and o["token"]["ok"] is True
assert o["upstreams"] == {"echo": True, "down": False}, o' "$out" &&
        ok "GET $p with a backend down: 200, ready, the backend false in the body" ||
        bad "$p with a backend down" "$out" "$T/code"
done
# the key goes from the token under veild: the node cannot serve
"$K" delete --key "$TOK;object=ops-down" --module "$MOD" --pin-source "file:$VEIL_TEST_PIN_FILE" \
    --yes >"$T/delete.log" 2>&1 || hard "cannot delete the key ops-down"
code=""
for ((i = 0; i < 600; i++)); do
    code=$(curl -s -o "$out" -w '%{http_code}' "$VEILD_URL/healthz/ready")
    [ "$code" = 503 ] && break
    sleep 0.1
done
[ "$code" = 503 ] && python3 -c '
import json, sys
o = json.load(open(sys.argv[1]))
assert o["ready"] is False and o["status"] == "unavailable" and o["token"]["ok"] is False' "$out" &&
    ok "the key gone from the token: /healthz/ready 503, ready false, the token's detail" ||
    bad "/healthz/ready with the key gone ($code)" "$out"
curl -s -o /dev/null -w '%{http_code}' "$VEILD_URL/healthz/live" >"$T/code"
[ "$(cat "$T/code")" = 200 ] && ok "GET /healthz/live is still 200 (the process serves)" ||
    bad "/healthz/live with the token down" "$T/code"
stop_veild && ok "veild stopped cleanly (exit 0)" || bad "veild's exit status" "$LOG4"

# -------------------------------------- 5. descriptors above FD_SETSIZE

# A service manager may hand veild open descriptors, and a busy veild has
# many connections and files: with 1100 descriptors already open, its
# listener and connections are numbered above select()'s limit of 1024.
# veild still starts, and answers over plain HTTP and v2's key route.
python3 - "$VEIL_BUILDDIR/veild" --port 0 --port-file "$T/fds.port" \
    --state-dir "$T/fds.state" "${VD[@]}" \
    >"$T/fds.log" 2>&1 </dev/null <<'PY' &
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard != resource.RLIM_INFINITY and hard < 2048:
    sys.exit(77)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
for _ in range(1100):
    os.set_inheritable(os.open("/dev/null", os.O_RDONLY), True)
os.execv(sys.argv[1], sys.argv[1:])
PY
FDS_PID=$!
VEILD_PIDS+=("$FDS_PID")
for ((i = 0; i < 300; i++)); do
    [ -s "$T/fds.port" ] || ! kill -0 "$FDS_PID" 2>/dev/null && break
    sleep 0.1
done
if [ -s "$T/fds.port" ]; then
    FDS_URL="http://127.0.0.1:$(tr -dc '0-9' <"$T/fds.port")"
    a=$(curl -s -o /dev/null -w '%{http_code}' "$FDS_URL/healthz/live")
    b=$(curl -s -o "$out" -w '%{http_code}' "$FDS_URL/.well-known/ohttp-gateway")
    [ "$a" = 200 ] && [ "$b" = 200 ] && [ -s "$out" ] &&
        ok "with 1100 descriptors open veild serves (/healthz/live, the v2 keys: 200)" ||
        bad "veild with 1100 descriptors open answered $a and $b" "$T/fds.log"
    kill -TERM "$FDS_PID" && wait "$FDS_PID" && ok "and stops cleanly (exit 0)" ||
        bad "veild with many descriptors: exit status" "$T/fds.log"
else
    bad "veild with 1100 descriptors open did not start" "$T/fds.log"
fi

# ---------------------------- 5b. what a restart would not cure: exit 2

# The shipped unit restarts veild on exit 1 (a port in use, a TPM not
# ready) and never on 2 (the configuration is wrong): a setting that can
# never work must be a 2, or systemd restarts it every 5 s for ever.
VD_OPS=(--server-key "$TOK;object=ops" --module "$MOD" --pin-source "file:$VEIL_TEST_PIN_FILE"
    --model echo=echo --port 0)
check "operator_keys without api_keys: --check-config refuses it (exit 2)" 2 \
    "operator_keys names keys of the api_keys file, and api_keys is not set" -- \
    "$VEIL_BUILDDIR/veild" "${VD_OPS[@]}" --operator-keys alice --check-config
check "operator_keys without api_keys: veild does not start (exit 2)" 2 \
    "operator_keys names keys of the api_keys file" -- \
    "$VEIL_BUILDDIR/veild" "${VD_OPS[@]}" --operator-keys alice --state-dir "$T/op.state"
check "operator_keys naming no key of the file: --check-config, said once (exit 2)" 2 \
    "check: operator_keys: 'nobody' names no key of the api_keys file" -- \
    "$VEIL_BUILDDIR/veild" "${VD_OPS[@]}" --api-keys "$T/api_keys" --operator-keys nobody --check-config
grep -q "operator_keys: operator_keys" "$err" && bad "the message repeats its prefix" "$err" ||
    ok "the message names operator_keys once"
check "operator_keys naming no key of the file: veild does not start (exit 2)" 2 \
    "'nobody' names no key" -- \
    "$VEIL_BUILDDIR/veild" "${VD_OPS[@]}" --api-keys "$T/api_keys" --operator-keys nobody \
    --state-dir "$T/op.state"
veild_start cap "${VD[@]}" --state-dir "$T/cap.state" --replay-capacity 1024
kill -TERM "$VEILD_PID" && wait "$VEILD_PID" || bad "veild (replay_capacity 1024) did not stop cleanly" "$VEILD_LOG"
check "a replay register of another capacity: exit 2, naming the capacity to set" 2 \
    "holds 1024 marks, replay_capacity says 2048: set replay_capacity = 1024" -- \
    "$VEIL_BUILDDIR/veild" "${VD[@]}" --port 0 --state-dir "$T/cap.state" --replay-capacity 2048
check "with the capacity set back, it starts (--check-config)" 0 "" -- \
    "$VEIL_BUILDDIR/veild" "${VD[@]}" --port 0 --state-dir "$T/cap.state" --replay-capacity 1024 --check-config

# ------------------------------------------------------ 6. no secrets

PIN=$(head -1 "$VEIL_TEST_PIN_FILE")
for f in "$LOG1" "$LOG2" "$LOG3" "$LOG4"; do
    for s in "$secret" "$wrong" "$PIN" "$PROMPT"; do
        grep -qF -- "$s" "$f" && bad "$(basename "$f") holds a secret or the prompt/answer ($s)"
    done
done
ok "no API key, PIN, prompt or answer in any log"

echo "test_ops: $pass passed, $fail failed"
[ "$fail" -eq 0 ] || exit 1
[ "$NO_NOTIFY" = 0 ] || exit 77
exit 0
