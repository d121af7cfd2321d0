#!/bin/sh
# Creates a throw-away SoftHSM2 token for tests and CI jobs.
#
#   make-token.sh DIR LABEL PIN SO_PIN
#
# Writes DIR/softhsm2.conf (token directory DIR/tokens), initialises a new token labelled
# LABEL with the given user PIN and SO PIN, and prints the line to use it:
#
#   export SOFTHSM2_CONF=DIR/softhsm2.conf
#
# Run it again with the same DIR and another LABEL for more tokens; they share the config.
# The PINs are passed to softhsm2-util on its command line: use this for test tokens only.
set -eu

if [ "$#" -ne 4 ]; then
    echo "usage: $0 DIR LABEL PIN SO_PIN" >&2
    exit 2
fi
label=$2
pin=$3
so_pin=$4

if ! command -v softhsm2-util >/dev/null 2>&1; then
    echo "$0: softhsm2-util not found; install SoftHSM2 (Debian/Ubuntu: apt-get install softhsm2)" >&2
    exit 1
fi

here=$(cd "$(dirname "$0")" && pwd)
template="$here/softhsm2.conf.in"
mkdir -p "$1/tokens"
dir=$(cd "$1" && pwd)
chmod 700 "$dir/tokens"
conf="$dir/softhsm2.conf"

# Escape the characters sed treats specially in the replacement.
tokendir=$(printf '%s' "$dir/tokens" | sed 's/[&|\\]/\\&/g')
# Write to a temporary name and rename, so that concurrent runs never see half a file.
sed "s|@TOKENDIR@|$tokendir|" "$template" >"$conf.tmp.$$"
mv -f "$conf.tmp.$$" "$conf"

SOFTHSM2_CONF="$conf" softhsm2-util --init-token --free --label "$label" \
    --pin "$pin" --so-pin "$so_pin" >/dev/null

echo "export SOFTHSM2_CONF=$conf"
