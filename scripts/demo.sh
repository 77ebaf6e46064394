#!/usr/bin/env bash
# The demo: builds knat, then runs `knat demo` (a small namespace cluster with real packets).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --quiet
exec ./target/release/knat demo "$@"
