#!/usr/bin/env bash
# Format, lint, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
exec scripts/test.sh
