#!/usr/bin/env bash
# What the labeling server's tests need beyond Python, set up where it can be
# (`make test` runs this before pytest):
#   - Chromium at /usr/bin/chromium for the browser tests (Debian's `chromium`);
#   - PostgreSQL answering at $ALIGNLOOP_TEST_PG (default
#     postgresql://postgres@127.0.0.1:5432/test, trust authentication).
# Missing ones are installed with apt and started when we are root and apt exists.
# This script never fails the build: whatever it cannot provide makes the tests
# that need it skip, each with its reason.
set -u

PG_URL="${ALIGNLOOP_TEST_PG:-postgresql://postgres@127.0.0.1:5432/test}"
PG_DEFAULT="postgresql://postgres@127.0.0.1:5432/test"

say() { echo "test-services: $*"; }

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

APT_UPDATED=0
apt_install() {
    # Try with the package lists there are; update them once if that fails.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 && return 0
    if [ "$APT_UPDATED" = 0 ]; then
        APT_UPDATED=1
        apt-get update -qq >/dev/null 2>&1 || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
    else
        return 1
    fi
}

# --- Chromium ---------------------------------------------------------------------
if [ -x /usr/bin/chromium ]; then
    say "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
elif can_apt; then
    say "installing chromium with apt (once)..."
    if apt_install chromium; then
        say "chromium: installed"
    else
        say "chromium: apt could not install it; the browser tests will skip"
    fi
else
    say "chromium: /usr/bin/chromium is missing and apt needs root; the browser tests will skip"
fi
# A CJK font, so the Chinese interface's screenshot shows characters, not boxes (the
# tests pass without it).
if [ -x /usr/bin/chromium ] && ! fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk"; then
    if can_apt && apt_install fonts-wqy-zenhei; then
        say "fonts-wqy-zenhei: installed (Chinese screenshots)"
    fi
fi

# --- PostgreSQL -------------------------------------------------------------------
pg_answers() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

if [ "$PG_URL" != "$PG_DEFAULT" ]; then
    say "postgresql: using ALIGNLOOP_TEST_PG as given (not managed here)"
    exit 0
fi

if pg_answers; then
    say "postgresql: answering at 127.0.0.1:5432"
    exit 0
fi

if ! can_apt; then
    say "postgresql: nothing answers at 127.0.0.1:5432 and apt needs root; the PostgreSQL tests will skip"
    exit 0
fi

if ! command -v pg_lsclusters >/dev/null 2>&1; then
    say "installing postgresql with apt (once)..."
    if ! apt_install postgresql; then
        say "postgresql: apt could not install it; the PostgreSQL tests will skip"
        exit 0
    fi
fi

# The newest cluster (Debian creates "main" on install); start it.
cluster="$(pg_lsclusters --no-header 2>/dev/null | sort -k1,1n | tail -1)"
if [ -z "$cluster" ]; then
    version="$(ls /usr/lib/postgresql | sort -n | tail -1)"
    pg_createcluster "$version" main >/dev/null 2>&1
    cluster="$(pg_lsclusters --no-header | tail -1)"
fi
version="$(echo "$cluster" | awk '{print $1}')"
name="$(echo "$cluster" | awk '{print $2}')"
hba="/etc/postgresql/$version/$name/pg_hba.conf"
# Local test server: trust connections from this machine only (the tests' URL has
# no password), placed first so that it wins.
if [ -f "$hba" ] && ! grep -q "alignloop test-services" "$hba"; then
    sed -i "1i host all all 127.0.0.1/32 trust  # alignloop test-services" "$hba"
fi
pg_ctlcluster "$version" "$name" start >/dev/null 2>&1 || pg_ctlcluster "$version" "$name" reload >/dev/null 2>&1

for _ in $(seq 1 30); do
    pg_answers && break
    sleep 1
done
if ! pg_answers; then
    say "postgresql: started but not answering at 127.0.0.1:5432; the PostgreSQL tests will skip"
    exit 0
fi
if command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- psql -qAtc "SELECT 1 FROM pg_database WHERE datname = 'test'" \
        | grep -q 1 || runuser -u postgres -- createdb test
fi
say "postgresql: $version/$name started at 127.0.0.1:5432"
exit 0
