#!/bin/sh
# The deploy step of examples/ci/.gitlab-ci.yml and examples/ci/github-actions.yml (the article's deploy_tfserving):
#
#   IMAGE=registry.example.com/pyserving:abc123 MODEL_NAME=my_model MODEL_VERSION=42 sh examples/ci/deploy.sh
#
# 1. applies deploy/k8s/overlays/cpu with IMAGE in place of pyserving:latest (a throw-away kustomization on top of
#    the overlay, so the overlay itself stays as committed);
# 2. copies models/$MODEL_NAME/$MODEL_VERSION into the PVC the pods serve from, under a dot-name first and then
#    renamed, so a server never sees a half-copied version. Running pods load it by themselves (they poll the base
#    path and serve the highest version); nothing restarts for a new model;
# 3. waits for the Deployment's rollout (a new IMAGE) to finish.
#
# Needs kubectl with a context for the cluster (NAMESPACE, default: the context's). POSIX sh: the GitLab job runs
# it in the Alpine-based docker image.
set -eu

: "${IMAGE:?set IMAGE to the pushed pyserving image, e.g. registry/pyserving:TAG}"
: "${MODEL_NAME:=my_model}"
: "${MODEL_VERSION:?set MODEL_VERSION to the version directory under models/MODEL_NAME}"
: "${MODEL_DIR:=models/$MODEL_NAME}"
: "${OVERLAY:=deploy/k8s/overlays/cpu}"
: "${PVC:=pyserving-models}"
: "${UPLOAD_IMAGE:=busybox:1.36}"  # has tar, which `kubectl cp` needs in the pod
: "${ROLLOUT_TIMEOUT:=15m}"

ns=""
if [ -n "${NAMESPACE:-}" ]; then ns="--namespace=$NAMESPACE"; fi
# shellcheck disable=SC2086  # $ns is empty or one word
k() { kubectl $ns "$@"; }

test -f "$MODEL_DIR/$MODEL_VERSION/saved_model.pb" || {
  echo "deploy.sh: no SavedModel at $MODEL_DIR/$MODEL_VERSION (the build_model job's artifact)" >&2
  exit 1
}

# 1. The manifests, with this pipeline's image.
work=$(mktemp -d .deploy.XXXXXX)
trap 'rm -rf "$work"' EXIT
image_name=${IMAGE%:*}
image_tag=${IMAGE##*:}
cat > "$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../$OVERLAY
images:
  - name: pyserving
    newName: $image_name
    newTag: "$image_tag"
EOF
k apply -k "$work"

# 2. The model version, into the PVC (created by step 1), through a pod that mounts it read-write. It runs as root
# because the claim's root directory usually belongs to root; the files it writes are world-readable.
pod="pyserving-upload-$MODEL_VERSION-$$"
k run "$pod" --image="$UPLOAD_IMAGE" --restart=Never --overrides="{
  \"spec\": {
    \"containers\": [{\"name\": \"upload\", \"image\": \"$UPLOAD_IMAGE\", \"command\": [\"sleep\", \"3600\"],
                      \"volumeMounts\": [{\"name\": \"models\", \"mountPath\": \"/models\"}]}],
    \"volumes\": [{\"name\": \"models\", \"persistentVolumeClaim\": {\"claimName\": \"$PVC\"}}]
  }
}"
trap 'k delete pod "$pod" --wait=false >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
k wait --for=condition=Ready "pod/$pod" --timeout=5m
target="/models/$MODEL_NAME/$MODEL_VERSION"
staging="/models/$MODEL_NAME/.upload-$MODEL_VERSION"
if k exec "$pod" -- test -e "$target/saved_model.pb"; then
  echo "deploy.sh: $target is already on the volume; not copying it again"
else
  k exec "$pod" -- sh -c "mkdir -p /models/$MODEL_NAME && rm -rf $staging"
  k cp "$MODEL_DIR/$MODEL_VERSION" "$pod:$staging"
  k exec "$pod" -- sh -c "chmod -R a+rX $staging && mv $staging $target"
  echo "deploy.sh: $target uploaded; the pods load it within their poll interval"
fi

# 3. The server: new pods replace old ones only once /readyz says every model is AVAILABLE.
k rollout status deployment/pyserving --timeout="$ROLLOUT_TIMEOUT"
