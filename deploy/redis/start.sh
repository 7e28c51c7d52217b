#!/bin/sh
# redis-server with dreambot's users (deploy/redis/users.acl), each password taken from the environment and
# written only as its SHA-256. Arguments go on to redis-server. Used by compose's redis and redis-replica.
set -eu
template=${DREAMBOT_ACL_TEMPLATE:-/etc/dreambot/users.acl}
acl=${DREAMBOT_ACL_FILE:-/tmp/dreambot-users.acl}
umask 077
sed -e '/^#/d' -e '/^[[:space:]]*$/d' "$template" > "$acl.new"
for name in REDIS_ADMIN_PASSWORD REDIS_BOT_PASSWORD REDIS_WORKER_PASSWORD REDIS_DASHBOARD_PASSWORD; do
  eval "value=\${$name:-}"
  if [ "${#value}" -lt 16 ]; then
    echo "redis: $name must be set to 16 characters or more (in .env; e.g. openssl rand -hex 32)" >&2
    exit 2
  fi
  hash=$(printf '%s' "$value" | sha256sum | cut -d' ' -f1)
  sed -i "s/{$name}/$hash/" "$acl.new"
done
mv "$acl.new" "$acl"
# --masterauth: a primary a failover turned into a replica logs in to the new primary as the default user.
exec redis-server --port "${REDIS_PORT:-6379}" "$@" --aclfile "$acl" --masterauth "$REDIS_ADMIN_PASSWORD"
