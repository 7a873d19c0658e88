# Sourced by the shell tests: counting checks the way a user sees them.
#   hard MSG                 setup failure: print, exit 99 (never a skip)
#   ok NAME / bad NAME FILE...   count a pass / a failure (showing FILEs)
#   check NAME EXPECTED_EXIT [ERE] -- command...
#       runs the command with stdin $IN (default /dev/null), stdout in $out
#       and stderr in $err; passes when the exit status is EXPECTED_EXIT and
#       (when given) the ERE matches stdout or stderr.
#   wait_for FILE ERE [COUNT]   polls until FILE has COUNT (1) lines
#       matching ERE; exit 99 (printing FILE) after 60 s: a hang, not a
#       timing assertion
#   count FILE ERE           the number of lines of FILE matching ERE
# The caller sets pass=0 fail=0 and out=... err=... first.

hard() { echo "ERROR (setup): $*"; exit 99; }

ok() { echo "ok: $1"; pass=$((pass + 1)); }

bad() {
    echo "FAIL: $1"
    shift
    for f in "$@"; do [ -s "$f" ] && sed 's/^/    /' "$f"; done
    fail=$((fail + 1))
}

check() {
    local name=$1 want=$2 pat=$3
    shift 4
    "$@" >"$out" 2>"$err" <"${IN:-/dev/null}"
    local got=$?
    if [ "$got" -ne "$want" ]; then
        bad "$name: exit $got, expected $want" "$out" "$err"
        return 1
    fi
    if [ -n "$pat" ] && ! grep -qE -- "$pat" "$out" "$err"; then
        bad "$name: output lacks /$pat/" "$out" "$err"
        return 1
    fi
    ok "$name"
}

wait_for() {
    local i n
    for ((i = 0; i < 1200; i++)); do
        n=$(grep -cE -- "$2" "$1" 2>/dev/null)
        [ "${n:-0}" -ge "${3:-1}" ] && return 0
        sleep 0.05
    done
    cat "$1"
    hard "no /$2/ in $1"
}

count() { grep -cE -- "$2" "$1" 2>/dev/null || true; }
