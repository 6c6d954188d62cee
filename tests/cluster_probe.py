"""For the two-node test: a callback with which each env runner writes the id of the Ray
node it runs on into the folder ``$RLLIB_PIRL_NODE_LOG``."""

import os

from rllib_pirl.callbacks import SuccessRateCallback


class NodeRecordingCallback(SuccessRateCallback):
    def on_environment_created(self, *, env_runner, env, env_context, **kwargs):
        import ray

        path = os.path.join(os.environ["RLLIB_PIRL_NODE_LOG"], f"env_runner_{os.getpid()}")
        with open(path, "w") as f:
            f.write(ray.get_runtime_context().get_node_id())
