#!/bin/bash
# SPDX-License-Identifier: MIT
# packaging/bash-completion/hydractl against hydractl itself: the verbs, global options, each verb's options, the
# verbs that take ROLE and the --preset names are read from the built hydractl's --help (and its errors), then
# asked of the completion function as bash would (COMP_WORDS, COMP_CWORD), in a shell without bash-completion.
# Prints "ok - ..."/"not ok - ..." lines, then "N passed, N failed".
set -uo pipefail

SRC=${HYDRA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
HYDRACTL=${HYDRACTL:-$SRC/build/hydractl}
COMPLETION=$SRC/packaging/bash-completion/hydractl
if [ ! -x "$HYDRACTL" ]; then
    echo "SKIP: no hydractl at $HYDRACTL (set HYDRACTL)"
    exit 77
fi

passed=0 failed=0
check() { # NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then
        echo "ok - $1"
        passed=$((passed + 1))
    else
        echo "not ok - $1"
        echo "#   expected: ${2//$'\n'/ }"
        echo "#   got:      ${3//$'\n'/ }"
        failed=$((failed + 1))
    fi
}

# shellcheck source=/dev/null
. "$COMPLETION" || { echo "not ok - sourcing $COMPLETION"; exit 1; }
check "complete -p hydractl names _hydractl" "complete -F _hydractl hydractl" "$(complete -p hydractl 2>&1)"

# comp WORD...: the words of the command line, the last one being completed; prints COMPREPLY sorted, one a line.
comp() {
    COMP_WORDS=("$@")
    COMP_CWORD=$(($# - 1))
    COMP_LINE="$*"
    COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    _hydractl hydractl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]:-}"
    printf '%s\n' "${COMPREPLY[@]}" | sed '/^$/d' | sort
}
sorted() { tr ' ' '\n' | sed '/^$/d' | sort -u; }

help=$("$HYDRACTL" --help)

# Verbs: the "Commands:" lines of --help ("  NAME ARGS").
verbs=$(sed -n '/^Commands:/,/^ROLE is/p' <<<"$help" | grep -E '^  [a-z]' | awk '{ print $1 }' | sort)
check "verbs: those of hydractl --help" "$verbs" "$(comp hydractl '')"
check "verbs: 'st' -> start status stop" "$(printf '%s\n' start status stop | sort)" "$(comp hydractl st)"

# Global options: the "Global options" lines of --help ("  -s, --socket PATH").
global=$(sed -n '/^Global options/,/^$/p' <<<"$help" | grep -oE '^  -[a-z], --[a-z-]+' | tr -d ',' | sorted)
check "global options: those of hydractl --help" "$global" "$(comp hydractl -)"
check "a global option with a value is skipped: --socket X st" "$(printf '%s\n' start status stop | sort)" \
    "$(comp hydractl --socket /run/x st)"
check "--timeout=5 stop -> ROLE" "$(sorted <<<'host isolated')" "$(comp hydractl --timeout = 5 stop '')"

# Each verb's options: the "Options:" lines of `hydractl VERB --help`, plus --help, plus --json unless hydractl
# refuses --json for that verb before calling anything (exit 2, "--json is not supported").
for verb in $verbs spec-dump; do
    vhelp=$("$HYDRACTL" "$verb" --help)
    expected=$(sed -n '/^Options:/,/^$/p' <<<"$vhelp" | grep -oE '^  (-[a-z], )?--[a-z-]+' | tr -d ',' | sorted)
    args=()
    grep -q '^Usage:.* ROLE' <<<"$vhelp" && args=(host)
    out=$(timeout 20 "$HYDRACTL" --socket /nonexistent/hydra.sock "$verb" "${args[@]}" --json 2>&1)
    if [ $? -eq 2 ] && grep -q -- '--json is not supported' <<<"$out"; then
        expected=$(printf '%s\n%s\n' "$expected" --help | sorted)
    else
        expected=$(printf '%s\n%s\n%s\n' "$expected" --help --json | sorted)
    fi
    check "$verb: options are those of hydractl $verb --help" "$expected" "$(comp hydractl "$verb" -)"
    # ROLE: offered where the verb's usage names ROLE, once, and not after --all.
    if grep -q '^Usage:.* \[\?ROLE' <<<"$vhelp"; then
        check "$verb: ROLE offered" "$(sorted <<<'host isolated')" "$(comp hydractl "$verb" '')"
        check "$verb: ROLE offered after an option" "$(sorted <<<'host isolated')" \
            "$(comp hydractl --json "$verb" --help '')"
        check "$verb: no second ROLE" "" "$(comp hydractl "$verb" host '')"
    else
        check "$verb: no ROLE" "" "$(comp hydractl "$verb" '')"
    fi
done
check "start --all: no ROLE" "" "$(comp hydractl start --all '')"
check "stop --timeout 5: the value skipped, ROLE offered" "$(sorted <<<'host isolated')" \
    "$(comp hydractl stop --timeout 5 '')"
check "roles: 'i' -> isolated" "isolated" "$(comp hydractl plan i)"

# Option values.
check "start --wait -> running ready" "$(sorted <<<'running ready')" "$(comp hydractl start --wait '')"
presets=$("$HYDRACTL" spec-dump --from-env --preset /nonexistent 2>&1 | sed -n 's/.*(known: \([^)]*\)).*/\1/p' | tr -d ',' | sorted)
check "register --preset -> the presets hydractl knows" "$presets" "$(comp hydractl register --from-env --preset '')"
check "register --set -> sections" "vm." "$(comp hydractl register --set v)"
check "logs --tail: no completion of its value" "" "$(comp hydractl logs --tail '')"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
touch "$scratch/isolated.ini" "$scratch/host.ini"
check "register --spec -> files" "$(printf '%s\n' "$scratch/host.ini" "$scratch/isolated.ini" | sort)" \
    "$(comp hydractl register isolated --spec "$scratch/")"
check "register --spec=FILE (split at '=') -> files" "$scratch/isolated.ini" \
    "$(comp hydractl register --spec = "$scratch/is")"
check "--socket -> files" "$scratch/host.ini" "$(comp hydractl --socket "$scratch/h")"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
