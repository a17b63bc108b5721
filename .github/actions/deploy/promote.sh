#!/usr/bin/env bash
# `slipway promote VERSION`: make a deployed version current.
set -euo pipefail
: "${SLIPWAY_API_URL:?server-url is required}"
: "${SLIPWAY_TOKEN:?token is required}"
: "${INPUT_PROJECT:?project is required}"
: "${INPUT_VERSION:?version is required: the deploymentVersion of the deploy step}"
read -r -a cli <<<"${SLIPWAY_CLI:-slipway}"
args=(promote "$INPUT_VERSION" --project "$INPUT_PROJECT" --env "${INPUT_ENV:-production}")
if [ -n "${INPUT_BRANCH:-}" ]; then
  args+=(--branch "$INPUT_BRANCH")
fi
"${cli[@]}" "${args[@]}"
