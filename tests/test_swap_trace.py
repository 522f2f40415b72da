"""The language-swap trace tells the skill a policy ran from whether the scene's task succeeded: the scripted expert,
which reads the task from the instruction, told to pull a raised handle closes its gripper on it and lifts (no
press); told to press, it presses with the gripper open."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo is first imported

from benchmarks import bench_metaworld, swap_trace
from smolvla.eval.agent import AgentFactory

RECIPE = """
name: toy_swap
tasks: handle-press,handle-pull
collect: {episodes_per_task: 1, image_size: 32, cameras: [corner2]}
eval: {episodes: 1, max_steps: 60, seed: 1000}
"""


def test_trace_reports_the_skill_the_instruction_chose(tmp_path):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    recipe = bench_metaworld.Recipe.load(tmp_path / "recipe.yaml")
    expert = AgentFactory("expert")()
    pressed = swap_trace.trace(expert, recipe, "handle-press", "handle-press", episodes=1)
    pulled = swap_trace.trace(expert, recipe, "handle-press", "handle-pull", episodes=1)
    assert pressed["success %"] == 100.0 and pressed["gripper closed %"] == 0.0
    assert pressed["object lowest cm"] < pressed["object start cm"] - 5  # pressed down
    assert pulled["success %"] == 0.0 and pulled["gripper closed %"] == 100.0
    assert pulled["object lowest cm"] > pressed["object lowest cm"] + 3  # the raised handle stays near the top
    assert pressed["object start cm"] == pulled["object start cm"]  # the same scene, the same start
