#!/usr/bin/env bash
# Checks the protos for breaking changes (buf's FILE rules) against the merge base of HEAD with main: everything
# this branch changed since it left main is checked at once, however many commits it has.
# BUF_BREAKING_AGAINST names another commit or branch to compare with.
set -euo pipefail
cd "$(dirname "$0")/.."
main_ref="${BUF_BREAKING_MAIN:-main}"
if [[ -n "${BUF_BREAKING_AGAINST:-}" ]]; then
  against="$BUF_BREAKING_AGAINST"
elif against="$(git merge-base HEAD "$main_ref" 2>/dev/null)" && [[ "$against" != "$(git rev-parse HEAD)" ]]; then
  :
else
  # On main itself the merge base is HEAD: compare with the commit before it.
  against="HEAD~1"
fi
if ! git rev-parse --verify --quiet "${against}^{commit}" >/dev/null; then
  echo "buf breaking: no commit ${against} to compare with (first commit or shallow clone); nothing to check" >&2
  exit 0
fi
if ! git cat-file -e "${against}:buf.yaml" 2>/dev/null; then
  echo "buf breaking: ${against} has no buf.yaml yet; nothing to compare" >&2
  exit 0
fi
node_modules/.bin/buf breaking --against ".git#ref=$(git rev-parse "${against}")"
echo "buf breaking: no breaking change against ${against} ($(git rev-parse --short "${against}"))"
