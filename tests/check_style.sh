#!/bin/bash
# Style checks over the C sources (run by `make check`, through
# tests/env/with-tokens.sh; VEIL_SRCDIR names the source tree).
#
#  1. banned functions: strcpy strcat sprintf vsprintf strtok gets atoi atol
#     called anywhere in engine/ providers/ protocol/ tools/ bench/ client/
#     gateway/ service/ tests/ fuzz/
#     (comments and string literals are ignored).  Always an error.
#  2. formatting: clang-format with the project's .clang-format over
#     engine/ providers/ protocol/ client/ service/ tools/ bench/ fuzz/.  A warning
#     for now; VEIL_STRICT_FORMAT=1
#     makes it an error.  Skipped when clang-format is not installed
#     (an error under VEIL_STRICT_FORMAT=1).
#  3. layers: tests/check_includes.py (no include circle, no layer that
#     includes one above it, no call circle inside client/ or gateway/
#     when VEIL_BUILDDIR holds their objects).  Always an error.
#  4. file size: no .c or .h file in client/, gateway/ or service/ above
#     MAX_LINES (900) lines; a feature gets its own files.  Always an error.
#
# Prints file:line for each banned call and ends with
# "check_style: N passed, M failed"; exits 1 when a check failed.

set -u

readonly ME="check_style"
BANNED=(strcpy strcat sprintf vsprintf strtok gets atoi atol)
C_DIRS=(engine providers protocol tools bench client gateway service tests fuzz)
FORMAT_DIRS=(engine providers protocol client service tools bench fuzz)

if [ -n "${VEIL_SRCDIR:-}" ]; then
    SRCDIR=$VEIL_SRCDIR
else
    SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fi
if [ ! -f "$SRCDIR/engine/veil/engine.h" ]; then
    printf '%s: error: %s is not the veil source tree (set VEIL_SRCDIR)\n' \
        "$ME" "$SRCDIR" >&2
    exit 99
fi
cd "$SRCDIR" || exit 99

passed=0
failed=0

# c_files DIR...: the .c and .h files under the existing DIRs, sorted, one
# per line (paths relative to the source tree; no file names with newlines
# in this project).
c_files() {
    local d existing=()
    for d in "$@"; do
        [ -d "$d" ] && existing+=("$d")
    done
    [ "${#existing[@]}" -gt 0 ] || return 0
    find "${existing[@]}" -type f \( -name '*.c' -o -name '*.h' \) -print |
        LC_ALL=C sort
}

# ---------------------------------------------------------- banned functions

mapfile -t files < <(c_files "${C_DIRS[@]}")

banned_alt=$(IFS="|"; printf '%s' "${BANNED[*]}")
banned_re="(^|[^A-Za-z0-9_])(${banned_alt})[ $(printf '\t')]*[(]"
hits=0
if [ "${#files[@]}" -gt 0 ]; then
    # Blank out comments (also across lines) and string and character
    # literals, then look for a banned name followed by "(".
    report=$(awk -v re="$banned_re" '
        FNR == 1 { in_comment = 0 }
        {
            line = $0; out = ""; n = length(line); i = 1
            while (i <= n) {
                c = substr(line, i, 1); c2 = substr(line, i, 2)
                if (in_comment) {
                    if (c2 == "*/") { in_comment = 0; out = out "  "; i += 2 }
                    else { out = out " "; i++ }
                    continue
                }
                if (c2 == "/*") { in_comment = 1; out = out "  "; i += 2; continue }
                if (c2 == "//") break
                if (c == "\"" || c == "\047") {
                    q = c; out = out " "; i++
                    while (i <= n) {
                        c = substr(line, i, 1)
                        if (c == "\\") { i += 2; continue }
                        i++
                        if (c == q) break
                    }
                    out = out " "
                    continue
                }
                out = out c; i++
            }
            rest = out
            while (match(rest, re)) {
                name = substr(rest, RSTART, RLENGTH)
                sub(/^[^A-Za-z_]/, "", name)
                sub(/[ \t]*[(]$/, "", name)
                text = $0
                sub(/^[ \t]+/, "", text)
                printf "%s:%d: banned function %s(): %s\n", FILENAME, FNR, name, text
                rest = substr(rest, RSTART + RLENGTH)
            }
        }' "${files[@]}")
    if [ -n "$report" ]; then
        printf '%s\n' "$report"
        hits=$(printf '%s\n' "$report" | wc -l)
    fi
fi
if [ "$hits" -eq 0 ]; then
    printf '%s: banned functions: none in %d files\n' "$ME" "${#files[@]}"
    passed=$((passed + 1))
else
    printf '%s: banned functions: %d uses (use snprintf, strtol/strtoul, ' \
        "$ME" "$hits"
    printf 'strtok_r, fgets, memcpy with explicit lengths)\n'
    failed=$((failed + 1))
fi

# ---------------------------------------------------------------- formatting

strict=${VEIL_STRICT_FORMAT:-0}
format_failed=0
if ! command -v clang-format >/dev/null 2>&1; then
    printf '%s: clang-format not installed; format check skipped\n' "$ME"
    [ "$strict" = 1 ] && format_failed=1
elif [ ! -f .clang-format ]; then
    printf '%s: %s/.clang-format is missing; format check skipped\n' \
        "$ME" "$SRCDIR"
    [ "$strict" = 1 ] && format_failed=1
else
    mapfile -t ffiles < <(c_files "${FORMAT_DIRS[@]}")
    tmp=$(mktemp "${TMPDIR:-/tmp}/check_style.XXXXXX") || exit 99
    trap 'rm -f "$tmp" "$tmp.err"' EXIT
    differ=0
    errors=0
    for f in "${ffiles[@]}"; do
        if ! clang-format --style=file "$f" >"$tmp" 2>"$tmp.err"; then
            printf '%s: clang-format failed on %s:\n' "$ME" "$f"
            sed 's/^/    /' "$tmp.err"
            errors=$((errors + 1))
        elif ! cmp -s "$tmp" "$f"; then
            n=$(diff "$f" "$tmp" | grep -c '^[<>]')
            printf '%s: would reformat %s (%d lines differ)\n' "$ME" "$f" "$n"
            differ=$((differ + 1))
        fi
        rm -f "$tmp.err"
    done
    printf '%s: %d files would be reformatted\n' "$ME" "$differ"
    if [ "$errors" -gt 0 ]; then
        format_failed=1
    elif [ "$differ" -gt 0 ]; then
        if [ "$strict" = 1 ]; then
            format_failed=1
        else
            printf '%s: formatting is a warning only; VEIL_STRICT_FORMAT=1 ' \
                "$ME"
            printf 'makes it an error (clang-format -i FILE fixes a file)\n'
        fi
    fi
fi
if [ "$format_failed" = 1 ]; then
    failed=$((failed + 1))
else
    passed=$((passed + 1))
fi

# -------------------------------------------------------------------- layers

if python3 "$SRCDIR/tests/check_includes.py" "$SRCDIR"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
fi

# ----------------------------------------------------------------- file size

MAX_LINES=900
big=0
while read -r f; do
    n=$(wc -l <"$f")
    if [ "$n" -gt "$MAX_LINES" ]; then
        printf '%s: %s has %d lines (at most %d: split it along its seams)\n' \
            "$ME" "$f" "$n" "$MAX_LINES"
        big=$((big + 1))
    fi
done < <(c_files client gateway service)
if [ "$big" -eq 0 ]; then
    printf '%s: file size: none above %d lines in client/ gateway/ service/\n' \
        "$ME" "$MAX_LINES"
    passed=$((passed + 1))
else
    failed=$((failed + 1))
fi

printf '%s: %d passed, %d failed\n' "$ME" "$passed" "$failed"
[ "$failed" -eq 0 ]
