"""The Meta-World task catalogue: names, language instructions, difficulty groups and task-set resolution.

Meta-World itself ships neither instructions nor a difficulty split; both are conventions of the SmolVLA / LeRobot
Meta-World evaluation (easy 28, medium 11, hard 6, very hard 5). The instructions are our own wording. This module
imports nothing heavy so CLIs can validate task names before starting a simulator.
"""

from __future__ import annotations

from smolvla.errors import ConfigError

# name -> instruction, in Meta-World's own task order (the index seeds episodes, so never reorder it).
INSTRUCTIONS: dict[str, str] = {
    "assembly": "Pick up the ring and place it onto the peg.",
    "basketball": "Pick up the ball and drop it into the basket.",
    "bin-picking": "Move the cube from one bin into the other bin.",
    "box-close": "Pick up the lid and close the box with it.",
    "button-press-topdown": "Press the button down from above.",
    "button-press-topdown-wall": "Reach over the wall and press the button down from above.",
    "button-press": "Push the button in from the front.",
    "button-press-wall": "Reach past the wall and push the button in.",
    "coffee-button": "Press the button on the coffee machine.",
    "coffee-pull": "Pull the mug away from the coffee machine.",
    "coffee-push": "Push the mug under the coffee machine.",
    "dial-turn": "Turn the dial a quarter of a turn.",
    "disassemble": "Lift the ring off the peg.",
    "door-close": "Push the door closed.",
    "door-lock": "Turn the lock on the door.",
    "door-open": "Pull the door open by its handle.",
    "door-unlock": "Turn the lock to unlock the door.",
    "hand-insert": "Push the object into the hole in the table.",
    "drawer-close": "Push the drawer closed.",
    "drawer-open": "Pull the drawer open.",
    "faucet-open": "Rotate the faucet handle to turn the water on.",
    "faucet-close": "Rotate the faucet handle to turn the water off.",
    "hammer": "Pick up the hammer and drive the nail in.",
    "handle-press-side": "Press the handle down from the side.",
    "handle-press": "Press the handle down.",
    "handle-pull-side": "Pull the handle up from the side.",
    "handle-pull": "Pull the handle up.",
    "lever-pull": "Pull the lever up.",
    "pick-place-wall": "Pick up the puck, lift it over the wall and place it at the goal.",
    "pick-out-of-hole": "Pick the peg up out of the hole.",
    "pick-place": "Pick up the puck and place it at the goal.",
    "plate-slide": "Slide the plate into the goal.",
    "plate-slide-side": "Slide the plate sideways into the goal.",
    "plate-slide-back": "Slide the plate back out of the goal.",
    "plate-slide-back-side": "Slide the plate sideways back out of the goal.",
    "peg-insert-side": "Insert the peg into the hole from the side.",
    "peg-unplug-side": "Pull the peg out of the hole sideways.",
    "soccer": "Push the ball into the goal.",
    "stick-push": "Grasp the stick and push the box with it.",
    "stick-pull": "Grasp the stick and pull the box with it.",
    "push": "Push the puck to the goal.",
    "push-wall": "Push the puck around the wall to the goal.",
    "push-back": "Push the puck back to the goal.",
    "reach": "Reach the goal position.",
    "reach-wall": "Reach over the wall to the goal position.",
    "shelf-place": "Pick up the puck and place it on the shelf.",
    "sweep-into": "Sweep the puck into the hole.",
    "sweep": "Sweep the puck off the edge of the table.",
    "window-open": "Slide the window open.",
    "window-close": "Slide the window closed.",
}
TASKS: tuple[str, ...] = tuple(INSTRUCTIONS)

_MEDIUM = (
    "basketball bin-picking box-close coffee-pull coffee-push hammer peg-insert-side push-wall soccer sweep sweep-into"
)
_HARD = "assembly hand-insert pick-out-of-hole pick-place push push-back"
_VERY_HARD = "shelf-place disassemble stick-pull stick-push pick-place-wall"
DIFFICULTY: dict[str, str] = {
    **{name: "easy" for name in TASKS},
    **{name: "medium" for name in _MEDIUM.split()},
    **{name: "hard" for name in _HARD.split()},
    **{name: "very_hard" for name in _VERY_HARD.split()},
}
DIFFICULTIES = ("easy", "medium", "hard", "very_hard")

MT10: tuple[str, ...] = (
    "reach", "push", "pick-place", "door-open", "drawer-open",
    "drawer-close", "button-press-topdown", "peg-insert-side", "window-open", "window-close",
)  # fmt: skip

GROUPS: dict[str, tuple[str, ...]] = {
    "mt10": MT10,
    "mt50": TASKS,
    **{level: tuple(t for t in TASKS if DIFFICULTY[t] == level) for level in DIFFICULTIES},
}


def canonical(name: str) -> str:
    """`pick-place`, `pick-place-v3` and `pick_place` all name the same task."""
    key = name.strip().lower().replace("_", "-").removesuffix("-v3")
    if key not in INSTRUCTIONS:
        raise ConfigError(
            f"unknown Meta-World task {name!r}; valid tasks: {', '.join(TASKS)}; or a group: {', '.join(GROUPS)}"
        )
    return key


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand a task set (`pick-place`, `reach,push`, `mt10`, `mt50`, `easy`, `very_hard`, ...) to task names.

    Order follows the spec; duplicates are dropped.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        group = GROUPS.get(part.lower().replace("-", "_"))
        for name in group if group is not None else (canonical(part),):
            if name not in out:
                out.append(name)
    if not out:
        raise ConfigError(f"empty Meta-World task set {spec!r}")
    return out


def instruction(name: str) -> str:
    return INSTRUCTIONS[canonical(name)]


def task_index(name: str) -> int:
    """Stable index of a task in Meta-World's order; used to derive per-episode seeds."""
    return TASKS.index(canonical(name))
