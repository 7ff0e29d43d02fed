#!/bin/sh
# Build the wsload benchmark client. Usage: bench/client/build.sh [OUTPUT]
# (default output: wsload next to this script).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/wsload"}
case $out in /*) ;; *) out="$PWD/$out" ;; esac
mkdir -p "$(dirname "$out")"
cd "$here"
cc -O2 -Wall -Wextra -o "$out" wsload.c -lssl -lcrypto
