#!/usr/bin/env bash
# Checks the protos for breaking changes (buf's FILE rules) against the previous commit.
set -euo pipefail
cd "$(dirname "$0")/.."
against="${BUF_BREAKING_AGAINST:-HEAD~1}"
if ! git rev-parse --verify --quiet "${against}^{commit}" >/dev/null; then
  echo "buf breaking: no commit ${against} to compare with (first commit or shallow clone); nothing to check" >&2
  exit 0
fi
if ! git cat-file -e "${against}:buf.yaml" 2>/dev/null; then
  echo "buf breaking: ${against} has no buf.yaml yet; nothing to compare" >&2
  exit 0
fi
node_modules/.bin/buf breaking --against ".git#ref=$(git rev-parse "${against}")"
echo "buf breaking: no breaking change against ${against}"
