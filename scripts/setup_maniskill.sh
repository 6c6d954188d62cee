#!/usr/bin/env bash
# ManiSkill3 on a CPU-only Debian 12 machine: the Vulkan loader, Mesa 25's software
# Vulkan driver (lavapipe) unpacked into a project folder (the system Mesa is not
# touched), mani-skill and numpy<2 (mplib, its motion planner, segfaults with numpy 2).
#
#   bash scripts/setup_maniskill.sh          # then: source .vulkan/env.sh
#
# Debian 12's own lavapipe (Mesa 22) is rejected by SAPIEN; bookworm-backports has
# Mesa 25. Its packages are fetched with a private apt state whose source is derived
# from this machine's configured Debian source (no mirror is named here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${PIRL_VULKAN_DIR:-$ROOT/.vulkan}
SOURCES=${PIRL_DEBIAN_SOURCES:-/etc/apt/sources.list.d/debian.sources}

log() { echo "[setup_maniskill] $*"; }

if [ ! -f "$DEST/env.sh" ]; then
  command -v apt-get >/dev/null || { echo "apt-get not found: this setup needs Debian 12 (bookworm)" >&2; exit 1; }
  log "installing the Vulkan loader and LLVM 15 (libvulkan1, libllvm15; lavapipe links it)"
  if ! dpkg -s libvulkan1 libllvm15 >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvulkan1 libllvm15 >/dev/null
  fi

  log "fetching Mesa 25 lavapipe from bookworm-backports (private apt state)"
  [ -f "$SOURCES" ] || { echo "no Debian source file at $SOURCES (set PIRL_DEBIAN_SOURCES)" >&2; exit 1; }
  STATE=$(mktemp -d)
  trap 'rm -rf "$STATE"' EXIT
  mkdir -p "$STATE/lists/partial" "$STATE/cache/archives/partial" "$STATE/parts" "$STATE/debs"
  # The deb822 stanza whose Suites: names bookworm, with Suites: bookworm-backports.
  python3 - "$SOURCES" > "$STATE/parts/backports.sources" <<'PY'
import sys
for stanza in open(sys.argv[1]).read().split("\n\n"):
    lines = stanza.strip().splitlines()
    suites = [l for l in lines if l.startswith("Suites:")]
    if suites and "bookworm" in suites[0].split()[1:]:
        print("\n".join("Suites: bookworm-backports" if l.startswith("Suites:") else l for l in lines))
        break
PY
  grep -q "bookworm-backports" "$STATE/parts/backports.sources" || { echo "no bookworm stanza in $SOURCES" >&2; exit 1; }
  APT=(apt-get -qq -o Dir::State="$STATE" -o Dir::State::Lists="$STATE/lists" -o Dir::Cache="$STATE/cache"
       -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$STATE/parts" -o Dir::State::status=/var/lib/dpkg/status)
  "${APT[@]}" update
  (cd "$STATE/debs" && "${APT[@]}" download mesa-vulkan-drivers/bookworm-backports libdrm2/bookworm-backports \
      libdrm-amdgpu1/bookworm-backports)
  rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp/root"
  for deb in "$STATE"/debs/*.deb; do dpkg-deb -x "$deb" "$DEST.tmp/root"; done
  LVP=$(find "$DEST.tmp/root" -name 'libvulkan_lvp.so' | head -n 1)
  ICD=$(find "$DEST.tmp/root" -name 'lvp_icd*.json' | head -n 1)
  [ -n "$LVP" ] && [ -n "$ICD" ] || { echo "lavapipe not found in the downloaded packages" >&2; exit 1; }
  LIBDIR=$(dirname "$LVP")
  # Point the ICD at the unpacked library (by its final path).
  FINAL_LVP=${LVP/#$DEST.tmp/$DEST}
  python3 - "$ICD" "$FINAL_LVP" <<'PY'
import json, sys
path, lib = sys.argv[1], sys.argv[2]
data = json.load(open(path))
data["ICD"]["library_path"] = lib
json.dump(data, open(path, "w"), indent=2)
PY
  cat > "$DEST.tmp/env.sh" <<ENV
# Mesa 25 lavapipe for ManiSkill/SAPIEN on a CPU machine (written by scripts/setup_maniskill.sh)
export VK_ICD_FILENAMES="${ICD/#$DEST.tmp/$DEST}"
export LD_LIBRARY_PATH="${LIBDIR/#$DEST.tmp/$DEST}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
  rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
  log "lavapipe unpacked into $DEST"
fi

log "installing rllib_pirl[maniskill] (mani-skill, numpy<2)"
python3 -m pip install -q -e "$ROOT[maniskill]"
log "done: source $DEST/env.sh before running ManiSkill"
