#!/usr/bin/env bash
# Installs everything the tests need (Python packages in .venv-test, pusher-js from npm, Node.js,
# the pebble ACME test CA, Chromium and redis-server if missing) and runs the whole suite.
# Arguments go to pytest:
#   bash tests/run.sh -k relay -x
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "tests/run.sh: installing Node.js and npm (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
if ! command -v chromium >/dev/null; then
  echo "tests/run.sh: installing Chromium (apt), for the dashboard's page tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null; then
  echo "tests/run.sh: installing pebble, the ACME test CA (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pebble
fi

if ! command -v redis-server >/dev/null && [ ! -x /usr/bin/redis-server ]; then
  echo "tests/run.sh: installing redis-server (apt), for the Redis broker's tests (each starts its own)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi

# An environment of its own: the Quick start's `pip install .` into .venv keeps serving while
# this one is (re)installed editable (one shared venv lost the running server's files).
venv=.venv-test
[ -x $venv/bin/python ] || python3 -m venv $venv
$venv/bin/python -m pip install --quiet --upgrade pip
$venv/bin/python -m pip install --quiet -e '.[test]'
npm ci --prefix tests/support/node --no-audit --no-fund --loglevel=error

# The Ruby side: Debian's ruby, rack, puma and unicorn for clients/ruby and examples/, and the
# gem's own minitest suite (a failure stops here).
if ! command -v ruby >/dev/null || ! command -v puma >/dev/null || ! command -v unicorn >/dev/null \
  || ! ruby -e 'require "rack"' 2>/dev/null; then
  echo "tests/run.sh: installing ruby, ruby-rack, puma and unicorn (apt), for clients/ruby and examples/"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby ruby-rack puma unicorn
fi
(cd clients/ruby && ruby -Ilib -Itest -e 'Dir["test/**/*_test.rb"].sort.each { |f| require File.expand_path(f) }')

$venv/bin/ruff check sidecar tests bench
$venv/bin/ruff format --check sidecar tests bench
$venv/bin/lint-imports
$venv/bin/mypy
exec $venv/bin/python -m pytest -q "$@"
