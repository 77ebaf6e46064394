#!/usr/bin/env bash
# The demo (root; re-runs itself through sudo when not root): installs what it needs, builds
# knat, then runs `knat demo` (a small namespace cluster with real packets). Arguments go to
# `knat demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/root.sh
source scripts/lib/root.sh
root_or_reexec scripts/demo.sh "$@"
# shellcheck source=scripts/lib/progress.sh
source scripts/lib/progress.sh

bash scripts/install-deps.sh
# The same build as scripts/image.sh's, so that either reuses the other's.
progress_cargo "building knat (release)" "about 3-5 min on a 2-core machine the first time, seconds afterwards" \
  build --release --locked --bin knat
progress "running knat demo (a few seconds)"
exec ./target/release/knat demo "$@"
