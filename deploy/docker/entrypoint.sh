#!/bin/sh
# TF Serving's tf_serving_entrypoint.sh, so `docker run IMAGE [FLAGS...]` means what it means with
# tensorflow/serving: MODEL_NAME and MODEL_BASE_PATH name the model, and FLAGS come after the defaults (the last
# of a repeated flag wins, so FLAGS override them; a --model_config_file makes the server ignore --model_name and
# --model_base_path, as TF Serving does). Unlike TF Serving's script it ends in `exec`: the server becomes PID 1
# and gets `docker stop`'s SIGTERM, drains and exits 0, instead of a shell that ignores the signal until SIGKILL.
set -e

case "${1-}" in
  tensorflow_model_server)
    # The article's Dockerfile: CMD ["tensorflow_model_server", "--rest_api_port=8501", ...]. TF Serving's entrypoint
    # passes that word on and the server ignores it as a stray argument, keeping the defaults; so do we.
    shift ;;
  pyserving)
    if [ "${2-}" = serve ]; then shift 2; else exec "$@"; fi ;;
  -* | "") ;;
  *)
    # Any other command (a shell, python, `pyserving auth new-key`) runs as asked.
    exec "$@" ;;
esac

exec pyserving serve --port=8500 --rest_api_port=8501 --model_name="${MODEL_NAME}" \
  --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
