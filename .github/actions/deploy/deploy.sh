#!/usr/bin/env bash
# `slipway deploy --skip-promotion`; writes deploymentVersion to $GITHUB_OUTPUT.
set -euo pipefail
: "${SLIPWAY_API_URL:?server-url is required}"
: "${SLIPWAY_TOKEN:?token is required}"
: "${INPUT_PROJECT:?project is required}"
read -r -a cli <<<"${SLIPWAY_CLI:-slipway}"
args=(deploy "${INPUT_PATH:-.}" --project "$INPUT_PROJECT" --env "${INPUT_ENV:-production}" --skip-promotion)
if [ -n "${INPUT_BRANCH:-}" ]; then
  args+=(--branch "$INPUT_BRANCH")
fi
answer="$("${cli[@]}" --json "${args[@]}")"
version="$(printf '%s' "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("version") or "")')"
if [ -z "$version" ]; then
  echo "::error::the deployment has no version: $answer" >&2
  exit 1
fi
echo "Deployed version $version (not current until promoted)"
echo "deploymentVersion=$version" >>"${GITHUB_OUTPUT:-/dev/stdout}"
