#!/bin/sh
# The stack's entrypoint: loads the secrets a service needs, then runs its command.
# TFNN_SECRETS names them. Each comes from the file NAME_FILE names (a compose secret, mounted
# under /run/secrets) or else from the variable NAME, and is exported as NAME for the command,
# so it reaches the service through neither a command line (`ps`) nor the container's
# configuration (`docker inspect`). A secret that is missing, empty, short or still the
# placeholder of .env.example stops the service here with one line, before anything starts.
set -eu

PLACEHOLDER=change-me
MIN_LENGTH=12

for name in ${TFNN_SECRETS:-}; do
    case $name in
        *[!A-Z0-9_]* | [0-9]*)
            echo "tfnn: error: TFNN_SECRETS names '$name', which is not a variable name" >&2
            exit 2
            ;;
    esac
    eval "file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        # docker-compose.yml names each secret after its .env variable, in lower case.
        what="$name (from $file)"
        where=$(basename "$file" | tr '[:lower:]' '[:upper:]')
        if [ ! -f "$file" ] || [ ! -r "$file" ]; then
            problem="cannot be read"
        else
            # Bounded, and without the trailing newline an editor leaves.
            value=$(head -c 4096 "$file")
        fi
        unset "${name}_FILE"
    else
        what=$name
        where=$name
        eval "value=\${${name}-}"
    fi
    if [ -z "${problem:-}" ]; then
        if [ -z "$value" ]; then
            problem="is empty or not set"
        elif [ "$value" = "$PLACEHOLDER" ]; then
            problem="is still the placeholder '$PLACEHOLDER'"
        elif [ "${#value}" -lt "$MIN_LENGTH" ]; then
            problem="is shorter than $MIN_LENGTH characters"
        fi
    fi
    if [ -n "${problem:-}" ]; then
        echo "tfnn: error: $what $problem; set $where in .env (see .env.example) and restart" >&2
        exit 2
    fi
    export "$name=$value"
done
exec "$@"
