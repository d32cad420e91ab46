#!/usr/bin/env bash
# Installs the pinned Claude Code CLI into .tools/claude/claude, when it is
# not there yet. The CLI comes from PyPI: the wheel of `claude-agent-sdk`
# bundles it as one native executable (`claude_agent_sdk/_bundled/claude`),
# so only python3 and pip are needed, not Node or npm. Idempotent: does
# nothing when the binary is present and reports the pinned version.
#
# Overridable: PYTHON (default python3), CLAUDE_INSTALL_DIR (default
# .tools/claude in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."

# The wheel version and the CLI version it carries; change them together.
SDK_VERSION=0.2.189
CLI_VERSION=2.1.332

PYTHON=${PYTHON:-python3}
DIR=${CLAUDE_INSTALL_DIR:-.tools/claude}
BIN="$DIR/claude"

fail() { echo "install-claude: $*" >&2; exit 1; }

installed_version() { "$BIN" --version 2>/dev/null | head -n1 || true; }

if [ -x "$BIN" ]; then
  case "$(installed_version)" in
    "$CLI_VERSION"*) echo "== claude CLI $CLI_VERSION already in $BIN"; exit 0 ;;
    *) echo "== $BIN reports '$(installed_version)', not $CLI_VERSION: reinstalling" ;;
  esac
fi

[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] \
  || fail "only linux x86_64 is set up here (this is $(uname -s) $(uname -m))"
command -v "$PYTHON" >/dev/null || fail "$PYTHON not found; install python3 and pip (apt-get install python3-pip)"
"$PYTHON" -m pip --version >/dev/null 2>&1 \
  || fail "pip is missing for $PYTHON; install it (apt-get install python3-pip)"

mkdir -p "$DIR"
work=$(mktemp -d "$DIR/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== downloading claude-agent-sdk $SDK_VERSION (it bundles the claude CLI $CLI_VERSION)"
# --platform needs --only-binary and --no-deps; several manylinux tags so
# pip takes whichever one the wheel was published for.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64 \
  --dest "$work" "claude-agent-sdk==$SDK_VERSION" \
  || fail "pip could not download claude-agent-sdk==$SDK_VERSION for linux x86_64 (is PyPI reachable?)"

wheel=$(ls "$work"/claude_agent_sdk-"$SDK_VERSION"-*.whl 2>/dev/null | head -n1 || true)
[ -n "$wheel" ] || fail "pip downloaded no claude_agent_sdk $SDK_VERSION wheel into $work"

"$PYTHON" - "$wheel" "$work/claude" <<'PY' || fail "could not extract the CLI from $wheel"
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
member = "claude_agent_sdk/_bundled/claude"
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit(f"{wheel} has no {member}")
    with z.open(info) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
chmod 755 "$work/claude"
mv -f "$work/claude" "$BIN"

got=$(installed_version)
case "$got" in
  "$CLI_VERSION"*) echo "== installed $BIN: $got" ;;
  *) fail "$BIN reports '$got', expected $CLI_VERSION" ;;
esac
