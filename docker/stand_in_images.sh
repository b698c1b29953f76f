#!/bin/sh
# Builds stand-ins for the stack's two base images from Debian's packages, for a machine that
# reaches Debian's archive but no image registry (`docker pull` fails):
#   tfnn-stand-in/python:3.11   Debian bookworm's python3 (3.11) and pip, for PYTHON_IMAGE;
#   tfnn-stand-in/postgres:15   Debian bookworm's postgresql-15, for POSTGRES_IMAGE, with an
#                               entrypoint that does what the stack asks of the official one.
# Then set in .env:
#   PYTHON_IMAGE=tfnn-stand-in/python:3.11
#   POSTGRES_IMAGE=tfnn-stand-in/postgres:15
# They are named apart from the official images on purpose: the PostgreSQL stand-in is version
# 15, whose data directory a postgres:17 server cannot open (and the other way round).
#
# Usage (as root, with debootstrap installed): docker/stand_in_images.sh [python] [postgres]
# Each rootfs is made with debootstrap in a temporary directory and imported with
# `docker import`, so nothing runs inside a container and no container needs the network.
set -eu

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON_STAND_IN=tfnn-stand-in/python:3.11
POSTGRES_STAND_IN=tfnn-stand-in/postgres:15
# The .debs are kept between runs: a second image, or a rebuild, downloads nothing again.
CACHE=${TFNN_DEBOOTSTRAP_CACHE:-/var/cache/tfnn-debootstrap}

[ "$(id -u)" = 0 ] || { echo "stand_in_images: debootstrap needs root" >&2; exit 2; }
command -v debootstrap >/dev/null || {
    echo "stand_in_images: install debootstrap (apt-get install debootstrap)" >&2
    exit 2
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$CACHE"

# rootfs DIR PACKAGES: a minimal bookworm with PACKAGES, without apt's lists and caches.
rootfs() {
    timeout 1200 debootstrap --variant=minbase --cache-dir="$CACHE" --include="$2" \
        "$SUITE" "$1" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        exit 1
    }
    rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb \
        "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/*
}

python_image() {
    root=$work/python
    rootfs "$root" ca-certificates,python3,python3-pip,python-is-python3
    # As in the official image, pip installs into the system's Python (PEP 668's marker is
    # for machines whose Python belongs to the distribution; a container's belongs to it).
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    # The certificates this machine added to its own store (a TLS-inspecting proxy's, where
    # the registries are reached through one), so that pip in a build trusts what the host's
    # pip trusts.
    for cert in /usr/local/share/ca-certificates/*.crt; do
        [ -e "$cert" ] && cp "$cert" "$root/usr/local/share/ca-certificates/"
    done
    chroot "$root" update-ca-certificates >/dev/null
    tar -C "$root" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$PYTHON_STAND_IN"
}

# What the official image's docker-entrypoint.sh does for this stack: a new data directory
# gets POSTGRES_USER with POSTGRES_PASSWORD (scram-sha-256 over TCP), then the scripts in
# /docker-entrypoint-initdb.d run against a server that listens on its socket only; then the
# command runs as the postgres user, listening on every address.
POSTGRES_ENTRYPOINT='#!/bin/sh
set -eu
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?the stand-in needs POSTGRES_PASSWORD}"
    export POSTGRES_USER=${POSTGRES_USER:-postgres}
    printf %s "$POSTGRES_PASSWORD" >/tmp/pwfile
    initdb --username="$POSTGRES_USER" --pwfile=/tmp/pwfile --auth-local=trust \
        --auth-host=scram-sha-256 >/dev/null
    rm -f /tmp/pwfile
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=" -w start >/dev/null
    for script in /docker-entrypoint-initdb.d/*.sh; do
        [ -e "$script" ] && echo "stand-in: running $script" && sh "$script"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
if [ "${1:-}" = postgres ]; then
    shift
    exec postgres -c listen_addresses="*" "$@"
fi
exec "$@"
'

postgres_image() {
    root=$work/postgres
    # Debian's package would create a cluster of its own; the entrypoint makes the stack's.
    mkdir -p "$root/etc/postgresql-common"
    echo "create_main_cluster = false" >"$root/etc/postgresql-common/createcluster.conf"
    rootfs "$root" postgresql-15
    printf %s "$POSTGRES_ENTRYPOINT" >"$root/usr/local/bin/docker-entrypoint.sh"
    chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'VOLUME /var/lib/postgresql/data' \
        --change 'EXPOSE 5432' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'CMD ["postgres"]' \
        - "$POSTGRES_STAND_IN"
}

[ $# -gt 0 ] || set -- python postgres
for image in "$@"; do
    case $image in
        python) python_image && echo "stand_in_images: built $PYTHON_STAND_IN" ;;
        postgres) postgres_image && echo "stand_in_images: built $POSTGRES_STAND_IN" ;;
        *) echo "stand_in_images: unknown image '$image' (python or postgres)" >&2; exit 2 ;;
    esac
done
