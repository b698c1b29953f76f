#!/usr/bin/env bash
# The compose stack end to end in real containers: builds both images, starts the stack with
# generated secrets, runs the scheduled train through the worker, checks what MLflow and
# Prefect hold through their APIs (and that they refuse requests without credentials), drives
# the data watch's retrain trigger, restarts the stack and finds everything again, then
# removes it with its volumes.
#
#   scripts/stack_test.sh [MNIST_DIR]
#
# MNIST_DIR (or $TFNN_STACK_DATA): a folder of the four MNIST IDX files; default
# ../shared/data/mnist beside the project. The run gets a project name and ports of its own,
# so a stack of yours (project "tfnn") is left alone; it does rebuild the images tfnn:latest
# and tfnn-server:latest. Optional environment:
#   PYTHON_IMAGE, POSTGRES_IMAGE  base images (default: the official ones; when they can be
#                                 neither found nor pulled, stand-ins built by
#                                 docker/stand_in_images.sh from Debian's packages)
#   TFNN_BUILD_NETWORK            network of the builds (default: the engine's own, or host
#                                 where containers reach no registry but the host does)
#   TFNN_STACK_KEEP=1             leave the stack up when a check fails, to look at it
# Needs a Docker engine, Compose v2, curl and python3 (its standard library only).
# Prints "stack_test: figure ..." lines (the timings) and ends with "stack_test: passed".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA_SOURCE=${1:-${TFNN_STACK_DATA:-$ROOT/../shared/data/mnist}}
PROJECT=tfnn-stack-test
MODEL=tfnn-mnist
NEVER="0 0 1 1 *" # the crons stay out of the way: the test starts every run itself
HEALTHY_TIMEOUT=900
RUN_TIMEOUT=900
WATCH_TIMEOUT=600
START=$SECONDS

FAILED_LATER=() # checks that failed without stopping the others
say() { echo "stack_test: $*"; }
fail() {
    echo "stack_test: FAILED: $*" >&2
    exit 1
}
figure() { say "figure $1: $2 s"; }

for tool in docker curl python3; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
timeout 30 docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info)"
timeout 30 docker compose version >/dev/null 2>&1 || fail "Compose v2 (docker compose) is missing"
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
    t10k-labels-idx1-ubyte; do
    [ -f "$DATA_SOURCE/$name.gz" ] || fail "$DATA_SOURCE has no $name.gz (pass MNIST_DIR)"
done

WORK=$(mktemp -d)
chmod 755 "$WORK"
COMPOSE=(docker compose --project-name "$PROJECT" --project-directory "$ROOT"
    --env-file "$WORK/.env" -f "$ROOT/docker-compose.yml")
compose() { "${COMPOSE[@]}" "$@"; }

finish() {
    status=$?
    if [ "$status" != 0 ] && [ -f "$WORK/.env" ]; then
        compose logs --no-color --tail 60 >"$WORK/logs.txt" 2>&1 || true
        echo "stack_test: the services' last log lines:" >&2
        tail -c 12000 "$WORK/logs.txt" >&2 || true
        if [ "${TFNN_STACK_KEEP:-}" = 1 ]; then
            echo "stack_test: left up; remove it with:" \
                "docker compose -p $PROJECT down -v (and rm -r $WORK)" >&2
            exit "$status"
        fi
    fi
    [ -f "$WORK/.env" ] && timeout 300 "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
    rm -rf "$WORK"
    exit "$status"
}
trap finish EXIT

# --- JSON, IDX files and the two APIs ------------------------------------------------------

# json EXPR: EXPR evaluated with `data` bound to the JSON document on stdin; printed (a list
# or dict as JSON).
json() {
    python3 -c '
import json, sys
data = json.load(sys.stdin)
value = eval(sys.argv[1], {"data": data, "json": json})
print(json.dumps(value) if isinstance(value, (list, dict)) else value)' "$1"
}

random_secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# api mlflow|prefect PATH [JSON]: GET PATH, or POST JSON to it, with the stack's credentials.
api() {
    local url auth
    if [ "$1" = mlflow ]; then
        url=http://127.0.0.1:$MLFLOW_PORT/api/2.0/mlflow/$2 auth=admin:$MLFLOW_ADMIN_PASSWORD
    else
        url=http://127.0.0.1:$PREFECT_PORT/api/$2 auth=$PREFECT_AUTH_STRING
    fi
    if [ $# -gt 2 ]; then
        set -- -H 'Content-Type: application/json' -d "$3"
    else
        set --
    fi
    curl -sS --fail-with-body --max-time 30 -u "$auth" "$@" "$url"
}
mlflow_get() { api mlflow "$1"; }
mlflow_post() { api mlflow "$1" "$2"; }
prefect_get() { api prefect "$1"; }
prefect_post() { api prefect "$1" "$2"; }

# expect WHAT ACTUAL EXPECTED
expect() {
    [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
    say "ok: $1 ($2)"
}

# --- base images, secrets, build -----------------------------------------------------------

# base_image VARIABLE OFFICIAL STAND_IN KIND: the image to build on; the official one when the
# engine has it or can pull it, else the stand-in (built once, kept by the engine).
base_image() {
    local chosen=${!1:-$2}
    if timeout 30 docker image inspect "$chosen" >/dev/null 2>&1 ||
        timeout 600 docker pull -q "$chosen" >/dev/null 2>&1; then
        echo "$chosen"
    elif [ "$chosen" = "$2" ]; then
        if ! timeout 30 docker image inspect "$3" >/dev/null 2>&1; then
            say "cannot pull $2: building the stand-in $3 from Debian's packages" >&2
            "$ROOT/docker/stand_in_images.sh" "$4" >&2 || fail "the stand-in $3 did not build"
        fi
        echo "$3"
    else
        fail "$1=$chosen can be neither found nor pulled"
    fi
}

PYTHON_IMAGE=$(base_image PYTHON_IMAGE python:3.11-slim tfnn-stand-in/python:3.11 python)
POSTGRES_IMAGE=$(base_image POSTGRES_IMAGE postgres:17 tfnn-stand-in/postgres:15 postgres)
say "base images: $PYTHON_IMAGE, $POSTGRES_IMAGE"

reaches_pypi() {
    timeout 60 docker run --rm "$@" --entrypoint python3 "$PYTHON_IMAGE" -c \
        'import socket; socket.create_connection(("pypi.org", 443), timeout=20)' >/dev/null 2>&1
}
if [ -z "${TFNN_BUILD_NETWORK:-}" ]; then
    TFNN_BUILD_NETWORK=default
    if ! reaches_pypi && reaches_pypi --network host; then
        TFNN_BUILD_NETWORK=host # an engine without NAT for its containers (dockerd --iptables=false)
    fi
fi
say "build network: $TFNN_BUILD_NETWORK"

mkdir "$WORK/data" "$WORK/changed"
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
    t10k-labels-idx1-ubyte; do
    cp "$DATA_SOURCE/$name.gz" "$WORK/data/"
done
chmod 755 "$WORK/data"
chmod 644 "$WORK"/data/*

MLFLOW_ADMIN_PASSWORD=$(random_secret)
PREFECT_AUTH_STRING=admin:$(random_secret)
MLFLOW_PORT=$(free_port)
PREFECT_PORT=$(free_port)
cat >"$WORK/.env" <<EOF
POSTGRES_PASSWORD=$(random_secret)
MLFLOW_DB_PASSWORD=$(random_secret)
PREFECT_DB_PASSWORD=$(random_secret)
MLFLOW_ADMIN_PASSWORD=$MLFLOW_ADMIN_PASSWORD
MLFLOW_SECRET_KEY=$(random_secret)
PREFECT_AUTH_STRING=$PREFECT_AUTH_STRING
MLFLOW_PORT=$MLFLOW_PORT
PREFECT_PORT=$PREFECT_PORT
PYTHON_IMAGE=$PYTHON_IMAGE
POSTGRES_IMAGE=$POSTGRES_IMAGE
TFNN_BUILD_NETWORK=$TFNN_BUILD_NETWORK
TFNN_DATA_HOST_DIR=$WORK/data
TFNN_TRAIN_CRON="$NEVER"
TFNN_RETRAIN_CRON="$NEVER"
TFNN_NOTIFY_BLOCK=
EOF

t=$SECONDS
timeout 3600 "${COMPOSE[@]}" build --quiet || fail "the images did not build"
figure "build of both images" $((SECONDS - t))
say "image sizes: $(docker image inspect -f '{{index .RepoTags 0}} {{.Size}}' tfnn-server:latest tfnn:latest | awk '{printf "%s %.2f GB; ", $1, $2 / 1e9}')"

# --- the stack -----------------------------------------------------------------------------

SERVICES="postgres mlflow prefect-server worker"

wait_healthy() {
    local deadline=$((SECONDS + HEALTHY_TIMEOUT)) waiting id state
    while :; do
        waiting=""
        for service in $SERVICES; do
            id=$(compose ps -q "$service")
            [ -n "$id" ] || fail "no container for $service"
            state=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' "$id")
            case $state in
                "running healthy") ;;
                exited* | dead*) fail "$service stopped: $state" ;;
                *) waiting="$waiting $service" ;;
            esac
        done
        [ -z "$waiting" ] && return
        [ $SECONDS -lt "$deadline" ] || fail "not healthy within $HEALTHY_TIMEOUT s:$waiting"
        sleep 2
    done
}

t=$SECONDS
timeout 600 "${COMPOSE[@]}" up -d --quiet-pull >/dev/null 2>&1 || fail "docker compose up failed"
wait_healthy
figure "up to every service healthy" $((SECONDS - t))

# The 401s: no credentials, and a wrong password.
refused() { # refused WHAT CURL_ARGS...: the status of a request to each API
    local what=$1 code
    shift
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "$@" \
        "http://127.0.0.1:$MLFLOW_PORT/api/2.0/mlflow/experiments/search?max_results=1")
    expect "MLflow refuses a request $what" "$code" 401
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "$@" -X POST \
        -H 'Content-Type: application/json' -d '{}' "http://127.0.0.1:$PREFECT_PORT/api/flow_runs/filter")
    expect "Prefect refuses a request $what" "$code" 401
}
refused "without credentials"
refused "with a wrong password" -u admin:wrong-password-0123
# Both UIs are served (MLflow's behind its login).
expect "MLflow's UI page" "$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 \
    -u "admin:$MLFLOW_ADMIN_PASSWORD" "http://127.0.0.1:$MLFLOW_PORT/")" 200
expect "Prefect's UI page" "$(curl -s --max-time 30 "http://127.0.0.1:$PREFECT_PORT/" |
    grep -c '<div id="app"')" 1

# wait_flow_run ID: waits for the flow run's terminal state and prints its type.
wait_flow_run() {
    local deadline=$((SECONDS + RUN_TIMEOUT)) state
    while :; do
        state=$(prefect_get "flow_runs/$1" | json 'data["state_type"]')
        case $state in
            COMPLETED | FAILED | CRASHED | CANCELLED)
                echo "$state"
                return
                ;;
        esac
        [ $SECONDS -lt "$deadline" ] || fail "flow run $1 still $state after $RUN_TIMEOUT s"
        sleep 3
    done
}

# The scheduled train, started as its cron would, through the worker's entrypoint (which
# loads the Prefect auth string from its secret).
t=$SECONDS
output=$(timeout 300 "${COMPOSE[@]}" exec -T worker /app/docker/entrypoint.sh \
    prefect deployment run train-mnist/scheduled-train) || fail "prefect deployment run: $output"
TRAIN_RUN=$(grep -oE 'UUID: [0-9a-f-]{36}' <<<"$output" | cut -d' ' -f2)
[ -n "$TRAIN_RUN" ] || fail "no flow run id in: $output"
expect "the scheduled train's flow run $TRAIN_RUN" "$(wait_flow_run "$TRAIN_RUN")" COMPLETED
figure "scheduled train (deployment run to COMPLETED)" $((SECONDS - t))

# check_train RUN: what one train holds in Prefect and MLflow; sets RUN_ID and EXPERIMENT.
check_train() {
    local flow_run=$1 deployment link run epochs key history version card model
    flow_run_json=$(prefect_get "flow_runs/$flow_run")
    deployment=$(prefect_get deployments/name/train-mnist/scheduled-train | json 'data["id"]')
    expect "the flow run is the scheduled-train deployment's" \
        "$(json 'data["deployment_id"]' <<<"$flow_run_json")" "$deployment"
    expect "its state" "$(json 'data["state_type"]' <<<"$flow_run_json")" COMPLETED
    # A link artifact's data is markdown: [MLflow run ID](URL).
    link=$(prefect_post artifacts/filter \
        "{\"artifacts\": {\"flow_run_id\": {\"any_\": [\"$flow_run\"]}, \"key\": {\"any_\": [\"mlflow-run\"]}}}" |
        json '[a["data"] for a in data]')
    expect "the flow run has one mlflow-run link" "$(json 'len(data)' <<<"$link")" 1
    RUN_ID=$(json 'data[0].rsplit("/runs/", 1)[1].rstrip(")/")' <<<"$link")
    # Links a browser opens: the published ports, not the service names of the compose network.
    expect "the mlflow-run link is MLflow's UI on the published port" \
        "$(json 'data[0].split("(", 1)[1].split("#")[0]' <<<"$link")" "http://127.0.0.1:$MLFLOW_PORT/"
    run=$(mlflow_get "runs/get?run_id=$RUN_ID")
    expect "the MLflow run's prefect.flow_run_url is Prefect's UI on the published port" \
        "$(json '{t["key"]: t["value"] for t in data["run"]["data"]["tags"]}.get("prefect.flow_run_url")' <<<"$run")" \
        "http://127.0.0.1:$PREFECT_PORT/runs/flow-run/$flow_run"
    EXPERIMENT=$(json 'data["run"]["info"]["experiment_id"]' <<<"$run")
    expect "the flow run's mlflow-run link names its run's experiment" \
        "$(json 'data[0].split("/experiments/")[1].split("/")[0]' <<<"$link")" "$EXPERIMENT"
    expect "MLflow run $RUN_ID" "$(json 'data["run"]["info"]["status"]' <<<"$run")" FINISHED
    epochs=$(json '{p["key"]: p["value"] for p in data["run"]["data"]["params"]}["epochs"]' <<<"$run")
    for key in train/loss train/accuracy val/loss val/accuracy test/loss test/accuracy; do
        history=$(mlflow_get "metrics/get-history?run_id=$RUN_ID&metric_key=$key")
        expect "$key logged at epochs 1..$epochs" \
            "$(json '[m["step"] for m in sorted(data["metrics"], key=lambda m: m["step"])]' <<<"$history")" \
            "$(python3 -c "import json; print(json.dumps(list(range(1, $epochs + 1))))")"
    done
    # The network learned: real MNIST, the notebook's network, a few epochs.
    expect "the last epoch's test accuracy is above 0.9" "$(mlflow_get \
        "metrics/get-history?run_id=$RUN_ID&metric_key=test/accuracy" |
        json 'max(data["metrics"], key=lambda m: m["step"])["value"] > 0.9')" True
    version=$(mlflow_get "model-versions/search?filter=run_id%3D%27$RUN_ID%27" |
        json 'data["model_versions"]')
    expect "one registered version of $MODEL from the run" \
        "$(json '[(v["name"], v["status"]) for v in data]' <<<"$version")" "[[\"$MODEL\", \"READY\"]]"
    card=$(json 'data[0].get("description", "")' <<<"$version")
    # What the card must name, from the run's own params: the architecture and the data.
    expect "the version's model card names the run's architecture and data digest" "$(python3 -c '
import json, sys
run, card = json.loads(sys.argv[1]), sys.argv[2]
params = {p["key"]: p["value"] for p in run["run"]["data"]["params"]}
architecture = " -> ".join(["784", *params["hidden_sizes"].split(","), "10"])
print(architecture in card and params["data_digest"][:12] in card)' "$run" "$card")" True
    expect "the model card's links go to the published ports" "$(python3 -c '
import re, sys
links = re.findall(r"\]\((https?://[^)]*)\)", sys.argv[1])
print(bool(links) and all(link.startswith(tuple(sys.argv[2:])) for link in links))' "$card" \
        "http://127.0.0.1:$MLFLOW_PORT/" "http://127.0.0.1:$PREFECT_PORT/")" True
    model=$(mlflow_get "logged-models/$(json 'data[0]["source"].removeprefix("models:/")' <<<"$version")")
    expect "the logged model comes from the run" \
        "$(json 'data["model"]["info"]["source_run_id"]' <<<"$model")" "$RUN_ID"
    LOGGED_MODEL_EXPERIMENT=$(json 'data["model"]["info"]["experiment_id"]' <<<"$model")
    # A known bug (issue 23): reported, and the test fails at the end, after every other check.
    if [ "$LOGGED_MODEL_EXPERIMENT" != "$EXPERIMENT" ]; then
        FAILED_LATER+=("the logged model is in experiment $LOGGED_MODEL_EXPERIMENT, its run in experiment $EXPERIMENT (issue 23)")
        say "not ok: ${FAILED_LATER[-1]}"
    else
        say "ok: the logged model is in its run's experiment ($EXPERIMENT)"
    fi
}
check_train "$TRAIN_RUN"
TRAIN_MLFLOW_RUN=$RUN_ID

# --- the data watch's retrain trigger ------------------------------------------------------

events() {
    prefect_post events/filter \
        '{"filter": {"event": {"prefix": ["tfnn.data."]}, "order": "ASC"}, "limit": 50}' |
        json 'data["events"]'
}
# The scheduled-retrain runs that left the schedule, oldest first.
retrains() {
    prefect_post flow_runs/filter \
        '{"deployments": {"name": {"any_": ["scheduled-retrain"]}}, "flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED"]}}}, "sort": "EXPECTED_START_TIME_ASC"}'
}
WATCH_VARIABLE=tfnn_data_watch_$(printf %s /data/mnist | sha256sum | cut -c1-16)

# The watch's state once it has checked the files it sees; empty until then.
watch_checked() {
    { prefect_get "variables/name/$WATCH_VARIABLE" |
        json 'data["value"].get("checked_fingerprint") == data["value"]["fingerprint"]'; } \
        2>/dev/null || true
}
until_true() { # until_true SECONDS WHAT COMMAND...: waits until COMMAND prints True
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until [ "$("$@")" = True ]; do
        [ $SECONDS -lt "$deadline" ] || fail "no $what within $limit s"
        sleep 3
    done
}
all_retrains_ended() {
    retrains | json 'all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in data)'
}

# The watch has looked at the stack's first data (a look every 60 s, 30 s to settle), and
# whatever it started has ended: what follows is the change's alone.
until_true "$WATCH_TIMEOUT" "check of the first data by the watch" watch_checked
# Each tfnn.data.changed so far has started its retrain (the trigger takes some seconds).
every_event_retrained() {
    python3 -c '
import json, sys
events, runs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
started = {r["parameters"].get("data_event_id") for r in runs}
print(all(e["id"] in started for e in events if e["event"] == "tfnn.data.changed"))' \
        "$(events)" "$(retrains)"
}
until_true "$RUN_TIMEOUT" "retrain of each earlier data event" every_event_retrained
until_true "$RUN_TIMEOUT" "end of the retrains the first data started" all_retrains_ended
events_before=$(events | json 'len(data)')
retrains_before=$(retrains | json 'len(data)')
say "before the change: $events_before data event(s), $retrains_before retrain(s)" \
    "(the first data is announced when the watch checks it before a champion exists)"

# The changed data: the first 9,500 of the training examples (a shrink of 5%, which the check
# lets through), the same test split; each file put in place by one atomic rename.
python3 - "$WORK/data" "$WORK/changed" 9500 <<'PY'
import gzip, shutil, struct, sys
from pathlib import Path

source, target, keep = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for name, item_size in (("train-images-idx3-ubyte", 28 * 28), ("train-labels-idx1-ubyte", 1)):
    raw = gzip.decompress((source / f"{name}.gz").read_bytes())
    dims = raw[3]
    header = 4 + 4 * dims
    shape = list(struct.unpack(f">{dims}I", raw[4:header]))
    assert shape[0] > keep, f"{name} has {shape[0]} examples, not more than {keep}"
    shape[0] = keep
    body = raw[header : header + keep * item_size]
    (target / f"{name}.gz").write_bytes(
        gzip.compress(raw[:4] + struct.pack(f">{dims}I", *shape) + body)
    )
for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
    shutil.copy(source / f"{name}.gz", target / f"{name}.gz")
PY
t=$SECONDS
for file in "$WORK"/changed/*.gz; do
    cp "$file" "$WORK/data/.part" && chmod 644 "$WORK/data/.part"
    mv "$WORK/data/.part" "$WORK/data/$(basename "$file")"
done
new_event() { events | json "len(data) > $events_before"; }
until_true "$WATCH_TIMEOUT" "data event after the change" new_event
event=$(events | json "data[$events_before]")
expect "the watch announced" "$(json 'data["event"]' <<<"$event")" tfnn.data.changed
expect "about" "$(json 'data["resource"]["prefect.resource.id"]' <<<"$event")" tfnn.data./data/mnist
expect "the new data's training examples" "$(json 'data["payload"]["train_examples"]' <<<"$event")" 9500
figure "data change to tfnn.data.changed" $((SECONDS - t))
new_retrain() { retrains | json "len(data) > $retrains_before"; }
until_true "$WATCH_TIMEOUT" "retrain after the event" new_retrain
EVENT_ID=$(json 'data["id"]' <<<"$event")
RETRAIN_RUN=$(retrains | json "[r[\"id\"] for r in data if r[\"parameters\"].get(\"data_event_id\") == \"$EVENT_ID\"][0]")
expect "the retrain's flow run $RETRAIN_RUN" "$(wait_flow_run "$RETRAIN_RUN")" COMPLETED
figure "data change to the retrain's decision" $((SECONDS - t))
retrain=$(prefect_get "flow_runs/$RETRAIN_RUN")
expect "the retrain names the event" "$(json 'data["parameters"]["data_event_id"]' <<<"$retrain")" \
    "$(json 'data["id"]' <<<"$event")"
# Exactly one: the watch has looked again since the retrain ended, and nothing new came.
ended=$(json 'data["end_time"]' <<<"$retrain")
watch_looked() {
    prefect_post flow_runs/filter "{\"deployments\": {\"name\": {\"any_\": [\"watch-data\"]}}, \"flow_runs\": {\"start_time\": {\"after_\": \"$ended\"}, \"state\": {\"type\": {\"any_\": [\"COMPLETED\"]}}}}" |
        json 'len(data) >= 1'
}
until_true "$WATCH_TIMEOUT" "look of the watch after the retrain" watch_looked
sleep 5 # time for a trigger to fire, had the look announced anything
expect "data events since the change" "$(events | json "len(data) - $events_before")" 1
expect "retrains since the change" "$(retrains | json "len(data) - $retrains_before")" 1
decision=$(mlflow_post runs/search "{\"experiment_ids\": [\"$EXPERIMENT\"], \"filter\": \"tags.\`tfnn.data_event\` = '$(json 'data["id"]' <<<"$event")'\"}" |
    json '[{t["key"]: t["value"] for t in r["data"]["tags"]}.get("tfnn.decision") for r in data.get("runs", [])]')
case $decision in
    '["promoted"]' | '["kept"]') say "ok: the challenger's run holds the decision $decision" ;;
    *) fail "the challenger's runs tagged with the event hold the decisions $decision" ;;
esac

# --- down and up again: the volumes keep everything ----------------------------------------

timeout 300 "${COMPOSE[@]}" down >/dev/null 2>&1 || fail "docker compose down failed"
t=$SECONDS
timeout 600 "${COMPOSE[@]}" up -d >/dev/null 2>&1 || fail "docker compose up (again) failed"
wait_healthy
figure "up again to every service healthy" $((SECONDS - t))
check_train "$TRAIN_RUN"
expect "after the restart, the same MLflow run" "$RUN_ID" "$TRAIN_MLFLOW_RUN"
expect "after the restart, the retrain's state" \
    "$(prefect_get "flow_runs/$RETRAIN_RUN" | json 'data["state_type"]')" COMPLETED
# The model's files, through MLflow's artifact proxy, from the artifacts volume.
model_uri=$(mlflow_get "model-versions/search?filter=run_id%3D%27$RUN_ID%27" |
    json 'data["model_versions"][0]["source"].removeprefix("models:/")')
location=$(mlflow_get "logged-models/$model_uri" | json 'data["model"]["info"]["artifact_uri"]')
path=${location#mlflow-artifacts:/}
expect "the logged model's MLmodel file is served" "$(curl -sS --fail-with-body --max-time 30 \
    -u "admin:$MLFLOW_ADMIN_PASSWORD" \
    "http://127.0.0.1:$MLFLOW_PORT/api/2.0/mlflow-artifacts/artifacts/$path/MLmodel" |
    grep -c '^flavors:')" 1

timeout 300 "${COMPOSE[@]}" down -v >/dev/null 2>&1 || fail "docker compose down -v failed"
rm -f "$WORK/.env"
figure "the whole stack test" $((SECONDS - START))
if [ ${#FAILED_LATER[@]} -gt 0 ]; then
    fail "${#FAILED_LATER[@]} check(s) failed: ${FAILED_LATER[*]}"
fi
say passed
