#!/usr/bin/env bash
# Installs what the fan-out benchmark compares against and builds its load client:
# nginx with nchan (Debian), soketi (npm, with uWebSockets.js from the npm registry), and
# bench/client/wsload (C, OpenSSL).
set -euo pipefail
cd "$(dirname "$0")"

if ! [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || ! command -v nginx >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan
fi
if ! [ -f /usr/include/openssl/ssl.h ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev
fi
npm install --prefix peers/soketi --no-audit --no-fund --loglevel=error
# soketi's uWebSockets.js dependency points at a git host this machine cannot reach; the
# override in peers/soketi/package.json takes it from npm. Check the native module loads.
node -e "const u = require('./peers/soketi/node_modules/uWebSockets.js'); if (typeof u.App !== 'function') process.exit(1)"
bash client/build.sh client/wsload
echo "bench/setup.sh: nchan, soketi and wsload ready"
