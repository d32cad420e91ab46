#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what is missing
# (redis-server, and Dovecot and Exim for the email tests, from Debian's
# packages; the pinned Claude Code CLI from PyPI into .tools/claude), then checks formatting and lints, and runs every
# test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# bench/lua-costs (run by the bench's CI test) drives Redis with redis-benchmark.
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
# The email tests start their own Dovecot (IMAP + LMTP) and Exim (SMTP).
command -v dovecot >/dev/null || missing+=(dovecot-imapd)
[ -x /usr/lib/dovecot/lmtp ] || missing+=(dovecot-lmtpd)
command -v exim >/dev/null || missing+=(exim4-daemon-light)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

scripts/install-claude.sh

# The Docker runtime tests need a local Debian base image (no registry
# here); without a Docker engine they report themselves not run.
if docker info >/dev/null 2>&1; then
  echo "== docker base image"
  docker/make-base.sh || echo "== could not make the base image: the Docker tests will say why"
else
  echo "== no Docker engine: the Docker runtime tests will not run"
fi

echo "== rustfmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
