#!/usr/bin/env bash
# Check what the project needs outside Python; install it with apt when root on Debian,
# otherwise stop with the exact list of what to install.
set -euo pipefail

APT_PACKAGES=()
MISSING=()

need() {  # need <description> <apt package> <test command...>
  local what=$1 pkg=$2; shift 2
  if ! "$@" >/dev/null 2>&1; then MISSING+=("$what"); APT_PACKAGES+=("$pkg"); fi
}

java_17_or_newer() {
  command -v java >/dev/null || return 1
  local v; v=$(java -XX:-UsePerfData -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ -n "$v" ] && [ "$v" -ge 17 ]
}
postgres_server() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb; }
node_18_or_newer() {  # the AWS CDK CLI (deploy/aws, `npm ci` by make setup) needs Node.js >= 18
  command -v node >/dev/null || return 1
  local v; v=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)
  [ -n "$v" ] && [ "$v" -ge 18 ]
}
python_311() { command -v python3.11 || python3 -c 'import sys; assert sys.version_info[:2] == (3, 11)'; }

need "Python 3.11 with venv" python3.11-venv python_311
need "Java 17 (JDK or JRE)" openjdk-17-jre-headless java_17_or_newer
need "PostgreSQL server (15 or newer)" postgresql postgres_server
need "jarjar (/usr/share/java/jarjar.jar)" libjarjar-java test -f /usr/share/java/jarjar.jar
need "Jackson core jar" libjackson2-core-java test -f /usr/share/java/jackson-core.jar
need "Jackson databind jar" libjackson2-databind-java test -f /usr/share/java/jackson-databind.jar
need "Jackson annotations jar" libjackson2-annotations-java test -f /usr/share/java/jackson-annotations.jar
need "PostgreSQL JDBC driver jar" libpostgresql-jdbc-java test -f /usr/share/java/postgresql.jar
need "Node.js 18 or newer (for the AWS CDK CLI)" nodejs node_18_or_newer
need "npm" npm command -v npm
need "docker-compose (make test validates docker-compose.yaml with it; no Docker engine needed)" docker-compose command -v docker-compose

if [ ${#MISSING[@]} -eq 0 ]; then exit 0; fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null && [ -f /etc/debian_version ]; then
  echo "installing with apt: ${APT_PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  # Debian's postgresql package creates and starts a 'main' cluster; the stack runs its own.
  exit 0
fi

echo "Missing prerequisites:" >&2
for m in "${MISSING[@]}"; do echo "  - $m" >&2; done
echo "On Debian/Ubuntu: sudo apt-get install ${APT_PACKAGES[*]}" >&2
exit 1
