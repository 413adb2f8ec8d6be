#!/usr/bin/env bash
# Validates deploy/: every Kubernetes manifest against the Kubernetes API schemas
# (kubernetes-validate, strict: unknown fields fail) for the oldest and newest versions checked
# here, and docker-compose.yaml against the Compose specification (`docker compose config` where
# the compose plugin is installed, else the schema check-jsonschema ships). Both tools come
# from PyPI into a virtualenv of their own and carry their schemas, so no other network access
# is needed. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")"

K8S_VERSIONS=(1.30.0 1.37.0)
venv="${SWITCHYARD_DEPLOY_VENV:-${TMPDIR:-/tmp}/switchyard-deploy-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/check-jsonschema" ]; then
  echo "deploy: installing kubernetes-validate and check-jsonschema into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 check-jsonschema==0.39.0
fi

manifests=(k8s/*.yaml)
for version in "${K8S_VERSIONS[@]}"; do
  echo "deploy: kubernetes-validate --strict -k $version ${manifests[*]}"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
done

if docker compose version >/dev/null 2>&1; then
  echo "deploy: docker compose config docker-compose.yaml"
  SWITCHYARD_ADMIN_TOKEN=x docker compose -f docker-compose.yaml config --quiet
else
  echo "deploy: check-jsonschema (compose-spec) docker-compose.yaml"
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yaml
fi
echo "deploy: ok"
