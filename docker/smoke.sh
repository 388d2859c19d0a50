#!/usr/bin/env bash
# make docker-smoke: build the image and run it for real, on CPU, on this machine.
#
#   make docker-smoke                    # or: bash docker/smoke.sh
#
# Follows ../shared/tools/docker-here.sh (no GPU, no image registry: a local dockerd
# with no bridge network, a base image built from Debian packages, --network host for
# every build and container). On a normal machine with Docker, SMOKE_BASE_IMAGE=
# (empty) builds from the Dockerfile's own default base and skips docker-here.sh.
#
# What it shows, each step timed:
#   1. the image builds (docker/Dockerfile, repository root as context);
#   2. a container starts it on CPU, as the image does on a GPU box: `ray start` with
#      the pinned metrics port, then `serve run` of configs/single_gpu.yaml with only the
#      GPU bits switched to CPU (and other ports, because the host network is shared);
#   3. the model `reverb_asr_v1` is downloaded into a fresh named volume at /models from
#      a hub on 127.0.0.1 (a stand-in that serves the bundled demo model in the hub's
#      API and file layout; HF_ENDPOINT points the container at it), /readyz turns 200;
#   4. a real clip is transcribed through the `openai` SDK and its text checked against
#      tests/data/demo/manifest.json, as a file, as an SSE stream and live over the
#      realtime WebSocket; every process in the container runs as uid 1000;
#      Ray's metrics port answers with the app's ray_reverb_* metrics;
#   5. `docker stop` ends it within the grace period with exit code 0;
#   6. a second container on the same volume becomes ready, transcribes, and fetched
#      no model file from the hub (the cache in the volume was used); stop, exit code 0.
#
# Cleans up its containers, volume, hub and temp files on exit. Starts dockerd (through
# docker-here.sh) only when none answers, and stops it again only in that case.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
IMAGE=${SMOKE_IMAGE:-reverb-serve:smoke}
BASE_IMAGE=${SMOKE_BASE_IMAGE-local/python:3.11-bookworm}
DOCKER_HERE=${DOCKER_HERE:-$ROOT/../shared/tools/docker-here.sh}
GRACE_S=${SMOKE_STOP_GRACE_S:-60}
READY_TIMEOUT_S=${SMOKE_READY_TIMEOUT_S:-900}
CLIP=${SMOKE_CLIP:-heldout_00.opus}
RUN_ID="reverb-smoke-$$"
VOLUME="$RUN_ID-models"
WORK=$(mktemp -d "/tmp/$RUN_ID.XXXXXX")
chmod 755 "$WORK"
CONTAINERS=()
HUB_PID=
STARTED_DOCKERD=0
T0=$(date +%s.%N)
SUMMARY=()

since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
log() { printf '[smoke %6ss] %s\n' "$(since "$T0")" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
took() { since "$1"; }
step() { SUMMARY+=("$(printf '%-66s %7ss' "$1" "$2")"); log "$1: $2 s"; }

cleanup() {
  local rc=$?
  set +e
  for c in "${CONTAINERS[@]}"; do
    if [ "$rc" -ne 0 ] && docker inspect "$c" >/dev/null 2>&1; then
      echo "----- last log lines of $c -----"
      docker logs --tail 60 "$c" 2>&1
    fi
    docker rm -f "$c" >/dev/null 2>&1
  done
  docker volume rm -f "$VOLUME" >/dev/null 2>&1
  [ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null
  rm -rf "$WORK"
  if [ "$STARTED_DOCKERD" = 1 ] && [ -z "${SMOKE_KEEP_DOCKERD:-}" ]; then
    "$DOCKER_HERE" stop
  fi
  if [ "$rc" -eq 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$PY" ] || fail "$PY not found: run 'make run' or 'make test' once to create .venv"
command -v docker >/dev/null || fail "no docker client"
command -v curl >/dev/null || fail "no curl"

# --- 0. a Docker engine -------------------------------------------------------------
t=$(now)
if docker info >/dev/null 2>&1; then
  log "dockerd already running: using it (and leaving it running)"
elif [ -n "$BASE_IMAGE" ] && [ -x "$DOCKER_HERE" ]; then
  "$DOCKER_HERE" setup
  STARTED_DOCKERD=1
else
  fail "no Docker engine answers (docker info), and no $DOCKER_HERE to start one"
fi
step "0. docker engine ready" "$(took "$t")"

# --- 1. build -----------------------------------------------------------------------
t=$(now)
build_args=(--network host -f docker/Dockerfile -t "$IMAGE")
[ -n "${SMOKE_NO_CACHE:-}" ] && build_args+=(--no-cache)
[ -n "$BASE_IMAGE" ] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
log "docker build ${build_args[*]} . (log: $WORK/build.log)"
if ! docker build "${build_args[@]}" . >"$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log"
  fail "docker build failed"
fi
step "1. docker build" "$(took "$t")"
log "image $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f GB", $1/1e9}')"

# --- ports, the CPU config, the stand-in hub ----------------------------------------
# Every port the container binds is on the host's network: take free ones.
read -r HTTP_PORT METRICS_PORT HUB_PORT DASH_PORT AGENT_PORT CLIENT_PORT < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
log "ports: http $HTTP_PORT, ray metrics $METRICS_PORT, hub $HUB_PORT"
RAY_ARGS="--port=0 --dashboard-port=$DASH_PORT --dashboard-agent-listen-port=$AGENT_PORT"
RAY_ARGS+=" --ray-client-server-port=$CLIENT_PORT --num-cpus=2 --num-gpus=0"

# configs/single_gpu.yaml with the GPU switched off and the host network's ports:
# everything else (model reverb_asr_v1 from the hub, cache_dir /models, limits,
# deployments) is what the compose service runs.
"$PY" - "$WORK/smoke.yaml" "$HTTP_PORT" <<'EOF'
import sys, yaml
config = yaml.safe_load(open("configs/single_gpu.yaml"))
config["http_options"].update(host="127.0.0.1", port=int(sys.argv[2]))
cpus = {"Ingress": 0.5, "Transcriber": 0.75, "Realtime": 0.75}  # --num-cpus=2 below
for app in config["applications"]:
    assert app["args"]["model"] == "reverb_asr_v1" and app["args"]["cache_dir"] == "/models"
    app["args"].update(device="cpu", num_gpus=0, num_cpus=1)
    for deployment in app["deployments"]:
        deployment["ray_actor_options"].update(num_gpus=0, num_cpus=cpus[deployment["name"]])
yaml.safe_dump(config, open(sys.argv[1], "w"), sort_keys=False)
EOF
chmod 644 "$WORK/smoke.yaml"

# A stand-in for the hub on 127.0.0.1 (tests/hub_server.py, the one the download tests
# use): the API calls and file layout huggingface_hub's snapshot_download uses, serving
# the bundled streaming demo model (causal, as Reverb is, so the realtime app takes it)
# as Revai/reverb-asr. Every request is logged, so the second start can show that no
# model file was fetched again.
"$PY" tests/hub_server.py "$HUB_PORT" Revai/reverb-asr models/demo-live "$WORK/hub.log" &
HUB_PID=$!
for _ in $(seq 50); do
  curl -fsS -o /dev/null "http://127.0.0.1:$HUB_PORT/api/models/Revai/reverb-asr/revision/main" 2>/dev/null && break
  sleep 0.1
done
file_gets() { grep -c ' GET /Revai/reverb-asr/resolve/' "$WORK/hub.log" || true; }
docker volume create "$VOLUME" >/dev/null

# The image's own health check probes 8765; here the API is on $HTTP_PORT, so the same
# probe is given that port.
HEALTH_CMD="python -c \"import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/readyz', timeout=15).status == 200 else 1)\""

label() { case $1 in *-1) echo "first start: " ;; *) echo "second start:" ;; esac; }

start_container() {  # name -> starts it, waits for /readyz 200
  local name=$1 t
  CONTAINERS+=("$name")
  t=$(now)
  docker run -d --name "$name" --init --network host --shm-size 2g \
    --stop-timeout "$GRACE_S" \
    --health-cmd "$HEALTH_CMD" --health-interval 5s --health-timeout 20s --health-retries 3 \
    -e HF_ENDPOINT="http://127.0.0.1:$HUB_PORT" \
    -e REVERB_CONFIG=/app/configs/smoke.yaml \
    -e REVERB_METRICS_PORT="$METRICS_PORT" \
    -e REVERB_RAY_START_ARGS="$RAY_ARGS" \
    -v "$WORK/smoke.yaml:/app/configs/smoke.yaml:ro" \
    -v "$VOLUME:/models" \
    "$IMAGE" >/dev/null
  log "$name started; waiting for /readyz (up to ${READY_TIMEOUT_S}s)"
  local deadline=$(($(date +%s) + READY_TIMEOUT_S)) code=
  while :; do
    code=$(curl -s -o "$WORK/readyz.json" -w '%{http_code}' --max-time 15 \
      "http://127.0.0.1:$HTTP_PORT/readyz" 2>/dev/null || true)
    [ "$code" = 200 ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "$name exited before it was ready"
    [ "$(date +%s)" -lt "$deadline" ] || fail "$name not ready after ${READY_TIMEOUT_S}s (last /readyz: $code)"
    sleep 2
  done
  step "   $(label "$name") start to /readyz 200" "$(took "$t")"
  # To a file first: with pipefail, `docker logs | grep -q` fails when grep's early exit
  # cuts docker logs off (SIGPIPE) on a log long enough to be still being written.
  docker logs "$name" >"$WORK/$name.log" 2>&1
  grep -q 'Token authentication is enabled' "$WORK/$name.log" ||
    fail "$name: Ray's token authentication is not on"
  log "/readyz: $(head -c 300 "$WORK/readyz.json")"
}

transcribe() {  # name -> transcribes $CLIP through the openai SDK and checks the text
  local t
  t=$(now)
  "$PY" docker/smoke_client.py "$HTTP_PORT" "$CLIP" transcribe
  step "   $(label "$1") openai SDK transcription, text = manifest" "$(took "$t")"
}

stop_container() {  # name -> docker stop, checks time and exit code
  local name=$1 t s code
  t=$(now)
  docker stop -t "$GRACE_S" "$name" >/dev/null
  s=$(took "$t")
  code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
  log "$name: docker stop took ${s}s (grace ${GRACE_S}s), State.ExitCode=$code, OOMKilled=$(docker inspect -f '{{.State.OOMKilled}}' "$name")"
  [ "$code" = 0 ] || fail "$name exited with $code"
  awk -v s="$s" -v g="$GRACE_S" 'BEGIN { exit !(s < g) }' || fail "$name needed the whole grace period (killed)"
  step "   $(label "$name") docker stop (exit code 0)" "$s"
}

# --- 2-5. first start: download into the volume -------------------------------------
log "== first start: empty volume $VOLUME"
start_container "$RUN_ID-1"
first_gets=$(file_gets)
hub_lines=$(wc -l <"$WORK/hub.log")
log "hub: $first_gets model files fetched on the first start"
[ "$first_gets" -ge 4 ] || fail "the first start fetched $first_gets files from the hub, expected the model's files"
docker exec "$RUN_ID-1" sh -c 'cd /models/models--Revai--reverb-asr/snapshots/* && pwd && ls -lL' | sed 's/^/  /'
transcribe "$RUN_ID-1"

t=$(now)
"$PY" docker/smoke_client.py "$HTTP_PORT" "$CLIP" stream
step "   first start:  SSE stream (openai SDK) and a 415 for non-audio" "$(took "$t")"

t=$(now)
"$PY" docker/smoke_client.py "$HTTP_PORT" "$CLIP" live
step "   first start:  live session over /v1/realtime (openai SDK), finals" "$(took "$t")"

t=$(now)
docker top "$RUN_ID-1" -eo uid,pid,comm >"$WORK/top.txt"
sed 's/^/  /' "$WORK/top.txt" | head -8
nproc_total=$(($(wc -l <"$WORK/top.txt") - 1))
roots=$(awk 'NR > 1 && $1 == 0' "$WORK/top.txt" | wc -l)
log "processes in the container: $nproc_total, running as uid 0: $roots; exec user: uid $(docker exec "$RUN_ID-1" id -u)"
[ "$roots" = 0 ] || fail "processes run as root in the container"
[ "$(awk 'NR > 1 && $1 != 1000' "$WORK/top.txt" | wc -l)" = 0 ] || fail "processes not running as uid 1000"
step "   first start:  every process uid 1000, none uid 0" "$(took "$t")"

t=$(now)
# Replicas push their metrics to Ray's agent every few seconds: poll for the request.
for _ in $(seq 60); do
  curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt" 2>/dev/null || true
  grep -q '^ray_reverb_requests_total{.*route="/v1/audio/transcriptions".*status="200"' "$WORK/metrics.txt" &&
    grep -q '^ray_reverb_sse_first_delta_seconds_count' "$WORK/metrics.txt" &&
    grep -q '^ray_reverb_rejections_total{.*status="415"' "$WORK/metrics.txt" &&
    grep -q '^ray_reverb_transcriber_batches_total' "$WORK/metrics.txt" && break
  sleep 1
done
grep -q '^# HELP ray_reverb_requests_total' "$WORK/metrics.txt" || fail "no ray_reverb_requests_total on the metrics port"
log "metrics port $METRICS_PORT: $(grep -c '^# TYPE ray_reverb_' "$WORK/metrics.txt") ray_reverb_* and $(grep -c '^# TYPE ray_serve_' "$WORK/metrics.txt") ray_serve_* metrics"
grep '^# TYPE ray_reverb_' "$WORK/metrics.txt" | awk '{print "  " $3 " (" $4 ")"}'
[ -n "${SMOKE_SAVE_SCRAPE:-}" ] && cp "$WORK/metrics.txt" "$SMOKE_SAVE_SCRAPE"
step "   first start:  Ray metrics on the pinned port" "$(took "$t")"
log "health: $(docker inspect -f '{{.State.Health.Status}}' "$RUN_ID-1")"
stop_container "$RUN_ID-1"

# --- 6. second start: same volume, no second download -------------------------------
log "== second start: same volume $VOLUME, hub still reachable"
start_container "$RUN_ID-2"
second_gets=$(($(file_gets) - first_gets))
log "hub: $second_gets model files fetched on the second start; all it was asked since the first start:"
tail -n "+$((hub_lines + 1))" "$WORK/hub.log" | awk '{print "  " $2, $3}' | sort | uniq -c
[ "$second_gets" = 0 ] || fail "the second start fetched $second_gets model files again"
SUMMARY+=("   second start: model files fetched from the hub again: 0")
transcribe "$RUN_ID-2"
stop_container "$RUN_ID-2"

echo
echo "docker smoke: all steps passed"
printf '  %s\n' "${SUMMARY[@]}"
printf '  %-66s %7ss\n' "total" "$(took "$T0")"
