# Helpers the scripts share; sourced, not run: `. "$(dirname "$0")/lib.sh"`.

# Runs a command as root: directly when we are root, with sudo otherwise.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Installs Debian packages, running `apt-get update` once per script.
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Waits until $2/readyz answers 2xx (at most ${3:-30} seconds); $1 names
# the service in the messages.
wait_ready() {
  local name=$1 url=$2 seconds=${3:-30}
  for _ in $(seq $((seconds * 10))); do
    if curl -fsS -o /dev/null "$url/readyz" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$name did not become ready at $url within ${seconds}s" >&2
  return 1
}

# The value of `key=value` on a result line read from stdin (the bench
# tools print their results that way).
field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p"; }

# Creates an application in the chat-system at $1 and prints its token
# (with the admin credential, CHAT_SYSTEM_ADMIN_TOKEN).
create_application() { # chat-system url, name
  curl -fsS -XPOST "$1/applications" -H 'content-type: application/json' \
    -H "Authorization: Bearer ${CHAT_SYSTEM_ADMIN_TOKEN:?the chat-system admin token}" \
    -d "$(jq -cn --arg name "$2" '{name: $name}')" | jq -er .token
}

# A random credential: 32 bytes from the kernel, hex.
new_secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

# Fresh chat-system credentials for a run of the scripts, exported for
# the chat-system, the workers and the bench tools.
export_run_secrets() {
  CHAT_SYSTEM_WRITE_TOKEN=$(new_secret) CHAT_SYSTEM_ADMIN_TOKEN=$(new_secret)
  export CHAT_SYSTEM_WRITE_TOKEN CHAT_SYSTEM_ADMIN_TOKEN
}

# Prints the path of $1 (promtool or prometheus) from Debian's `prometheus`
# package: on PATH, or else the package downloaded and unpacked under
# target/tools (not installed: that would start a Prometheus server).
prometheus_tool() {
  local found tools=$PWD/target/tools
  if found=$(command -v "$1"); then echo "$found"; return; fi
  if [ ! -x "$tools/usr/bin/$1" ]; then
    echo "fetching $1 (Debian package prometheus, unpacked under target/tools)" >&2
    mkdir -p "$tools"
    local download
    download=$(mktemp -d)
    if ! (cd "$download" && apt-get download -qq prometheus 2>/dev/null); then
      as_root apt-get update -qq
      (cd "$download" && apt-get download -qq prometheus)
    fi
    dpkg-deb -x "$download"/prometheus_*.deb "$tools"
    rm -rf "$download"
  fi
  echo "$tools/usr/bin/$1"
}
